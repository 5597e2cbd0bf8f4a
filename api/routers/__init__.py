"""One router per resource; handlers stay thin and call a query module."""

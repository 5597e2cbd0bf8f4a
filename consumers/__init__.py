"""The subscription side: reading topics, offsets and consumer-group lag."""

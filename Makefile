# The two front-door commands: `make demo` and `make test`. Each installs what it needs first.
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml scripts/bootstrap
	scripts/bootstrap
	touch $(STAMP)

## Run the main job end to end on the local stack (real Kafka broker, embedded ClickHouse).
demo: $(STAMP)
	$(VENV)/bin/tracestream demo

## Run every test: fast unit tests and integration tests against a real broker and real ClickHouse.
test: $(STAMP)
	$(VENV)/bin/python -m pytest

.PHONY: demo test

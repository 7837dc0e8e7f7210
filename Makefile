# Two commands do all set-up:  `make demo` (run the study on the embedded demo data)
# and `make test`. Both create .venv from requirements.lock first if it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: demo test lint dry-run-amos clean

$(BIN)/seggrid: requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(BIN)/seggrid

demo: $(BIN)/seggrid
	$(BIN)/snakemake --cores $(CORES) --rerun-incomplete
	$(BIN)/snakemake --report results/report.html

test: $(BIN)/seggrid
	$(BIN)/python -m pytest tests

lint: $(BIN)/seggrid
	$(BIN)/snakemake --lint
	$(BIN)/snakefmt --check Snakefile workflow/rules

dry-run-amos: $(BIN)/seggrid
	$(BIN)/snakemake -n --configfile config/amos22_task1.yaml

clean:
	rm -rf results .snakemake

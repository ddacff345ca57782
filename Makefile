# One-command entry points. Each target sets up .venv on a fresh clone (or when setup.cfg or
# constraints.txt changed since the last install) and then does its job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg constraints.txt | sha256sum | cut -c1-16)
MLOPS_HOME ?= $(CURDIR)/.mlops
export MLOPS_HOME

.PHONY: venv demo test lint compile bench lock clean notebook

venv: $(STAMP)

$(STAMP): setup.cfg constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo ">> installing the pinned dependency set into $(VENV) (first time: a few minutes)"
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all,test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: venv
	$(BIN)/mlops demo
	$(BIN)/mlops demo-loop

test: venv
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# JupyterLab on 127.0.0.1 over notebooks/ (installs the jupyter extra the first time).
notebook: venv
	@$(BIN)/python -c "import jupyterlab" 2>/dev/null || \
		$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[jupyter]'
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir notebooks

lint: venv
	$(BIN)/ruff check .

compile: venv
	$(BIN)/mlops compile --out compiled

bench: venv
	$(BIN)/python bench/ingest_throughput.py
	$(BIN)/python bench/training.py
	$(BIN)/python bench/serving.py

lock: venv
	$(BIN)/pip freeze --exclude-editable | grep -v '^mlops-workflow' > constraints.txt.new
	@{ head -2 constraints.txt; cat constraints.txt.new; } > constraints.txt.tmp && rm constraints.txt.new && mv constraints.txt.tmp constraints.txt

clean:
	rm -rf $(VENV) .mlops compiled local_outputs

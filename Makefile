# The two commands of the README.  Each creates .venv and installs what it needs on first use.
# make demo: pack + verify the demo corpus, then train the SIT chain on it (cochl, then tau) and print the metrics.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := data/demo

.PHONY: demo test clean-demo

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m data_shards pack demo --root $(DEMO)/raw --out $(DEMO)/shards --overwrite
	$(PY) -m data_shards verify $(DEMO)/shards/cochlscene
	$(PY) -m data_shards verify $(DEMO)/shards/tau22
	$(PY) -m data_shards info $(DEMO)/shards/cochlscene
	$(PY) -m data_shards info $(DEMO)/shards/tau22
	$(PY) launch/train.py --stage cochl --demo
	$(PY) launch/train.py --stage tau --demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

clean-demo:
	rm -rf $(DEMO)

# The two commands of the README.  Each creates .venv and installs the locked set on first use.
# make demo: pack + verify the demo corpus, then train the SIT chain on it (cochl, then tau) and print the metrics.
# make lock: re-resolve requirements/lock-py<X.Y>.txt from pyproject.toml, keeping every pin that still fits;
# make lock-upgrade: the newest releases inside pyproject's ranges.  Then run make test and commit the locks.
PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
UV      := $(VENV)/bin/uv
# uv installs and resolves (parallel downloads; resolves for other Pythons than the one running it).
UV_PIN  := uv==0.13.8
DEMO    := data/demo
PYVER   := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])')
LOCK    := requirements/lock-py$(PYVER).txt
LOCKED_PYTHONS := 3.11 3.12 3.13
# pyproject against every lock: needs only packaging (at the lock's version) and the source tree
CHECK_LOCKS = $(UV) pip install -q --python $(PY) -c $(LOCK) packaging && $(PY) -m trainer.stack --check-locks

.PHONY: demo test lock lock-upgrade clean-demo

# The venv and uv alone, so that make lock works while pyproject and the old lock disagree.
$(UV): Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(UV_PIN)

# The locks are checked against pyproject before anything large is downloaded, the compiled pieces after.
$(VENV)/.installed: pyproject.toml $(LOCK) | $(UV)
	$(CHECK_LOCKS)
	$(UV) pip sync -q --python $(PY) --compile-bytecode --build-constraints $(LOCK) $(LOCK)
	$(UV) pip install -q --python $(PY) --no-deps --no-build-isolation -e .
	$(PY) -m trainer.stack --lock $(LOCK)
	touch $@

requirements/lock-py%.txt:
	@echo "error: no lock for Python $* (requirements/ has $(LOCKED_PYTHONS)); run make with PYTHON=python3.12 (or another of those), or add $* to LOCKED_PYTHONS and run make lock" >&2
	@exit 2

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

lock lock-upgrade: | $(UV)
	for v in $(LOCKED_PYTHONS); do \
	  $(UV) pip compile -q pyproject.toml --extra test --generate-hashes --python-version $$v \
	    --python-platform x86_64-manylinux_2_28 $(if $(filter lock-upgrade,$@),--upgrade) \
	    -o requirements/lock-py$$v.txt || exit 1; \
	done
	$(CHECK_LOCKS)

clean-demo:
	rm -rf $(DEMO)

# Two commands on a fresh machine: `make run` and `make test`. Both bootstrap the venv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# A CPU build of torch sits on this machine's disk; pinning it first keeps pip from
# pulling multi-GB CUDA wheels for the exporter.
TORCH  ?= torch==2.13.0

.PHONY: run test chaos install bench soak sasrec clean tools

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -e ".[export,dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/recstream demo

test: $(STAMP) tools
	$(PY) -m pytest

# The long fault-injection runs (tests marked chaos; `make test` runs their short versions).
chaos: $(STAMP)
	$(PY) -m pytest -m chaos -s -q

# Debian's docker-compose validates docker-compose.yml without a Docker engine
# (tests/test_deploy.py); installed when missing and running as root, else that test skips.
tools:
	@command -v docker-compose >/dev/null 2>&1 || \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) || \
	      echo "note: could not install docker-compose; tests/test_deploy.py will skip the compose checks"; \
	  else echo "note: docker-compose missing and not root; tests/test_deploy.py will skip the compose checks"; fi

# The suite: scoring, store, encoders, end to end (with the Faust floor and 50% load) over
# ml-100k and over a 100,000-item synthetic catalogue (its first run encodes the catalogue
# into the embedding cache: ~10 min on 2 cores), a 3-minute memory soak. One JSON line
# each; BENCHMARKS.md records them.
bench: $(STAMP)
	$(PY) -m bench

soak: $(STAMP)
	$(PY) -m bench soak --soak-seconds 600

# SASRec (RecBole 1.2.1 defaults) on the replay's ml-100k split, in its own venv (hours on CPU:
# compiled, 2-4 min an epoch on 2 cores). Run it again to go on exactly where it stopped
# (var/sasrec/latest.pth); a run carried over from another machine starts from SASREC_STATE
# (a copy of another machine's latest.pth; the 2026-12-02 run has stopped, BENCHMARKS.md).
SASREC_VENV  ?= .cache/sasrec-venv
SASREC_STATE ?= bench/sasrec-state.pth
sasrec:
	test -x $(SASREC_VENV)/bin/python || $(PYTHON) -m venv $(SASREC_VENV)
	$(SASREC_VENV)/bin/pip install -q "$(TORCH)"
	$(SASREC_VENV)/bin/pip install -q --no-deps recbole==1.2.1
	$(SASREC_VENV)/bin/pip install -q -r bench/sasrec-requirements.txt
	test -e var/sasrec/latest.pth || ! test -e $(SASREC_STATE) || \
	  { mkdir -p var/sasrec && cp $(SASREC_STATE) var/sasrec/latest.pth; }
	nice -n 19 $(SASREC_VENV)/bin/python bench/sasrec.py --out var/sasrec --compile \
	  $$(test -e var/sasrec/latest.pth && echo --resume)

clean:
	rm -rf $(VENV) .pytest_cache

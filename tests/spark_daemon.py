"""The Python worker daemon of the test session (`spark.python.daemon.module`, tests/conftest.py):
pyspark.daemon itself, with what the embedding UDF needs (torch, transformers) imported once
before it forks the workers.

Spark drops a Python worker after a minute idle (PythonWorkerFactory), so across a test run the
embed stage keeps getting fresh workers; each imported torch and transformers again (seconds of
CPU each, on a 2-core machine). Forked from this daemon they start with both loaded. Only
imports happen here: no torch op runs before the fork (no thread pool to inherit).
"""
from __future__ import annotations

import importlib

from pyspark import daemon, worker  # noqa: F401 (the worker module, imported before the fork as well)

# What the workers would import anyway; any that is missing is left to them (as without this daemon).
PRELOAD = ("pyarrow", "pandas", "torch", "transformers", "transformers.models.bert.modeling_bert",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "udfs.embedding", "udfs.text_clean")
for _name in PRELOAD:
    try:
        importlib.import_module(_name)
    except Exception:  # noqa: BLE001 - a preload is an optimisation only
        pass

if __name__ == "__main__":
    daemon.manager()

"""SparkSession construction from the `spark` section of the conf."""
from __future__ import annotations

import logging
import os
import sys

from pyspark import SparkConf
from pyspark.sql import SparkSession

from jobs import delta_jars

log = logging.getLogger(__name__)

# Defaults that matter for the embed stage; a profile's spark.conf overrides them.
BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.python.worker.reuse": "true",  # keeps each worker's loaded model between tasks
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "2048",
    "spark.sql.adaptive.enabled": "true",
    # The UI keeps every query's plan text; this job's plans are long (wide feature arrays,
    # file lists from the Delta log) and one driver runs hundreds of queries (streaming: without
    # end). Measured: a second full run on 200k users in one 4 GB driver died of heap space
    # while rendering a plan string. Cap the text and the history kept. Spark renders every
    # query's plan text as it starts, so the cap is also time: measured on the tests' 30-user
    # full run (warm driver, 2 cores), 59.9 s at 200,000 characters, 52.4 s at 2,000, and
    # 48.6 s at 20,000 with the simple explain mode (the SQL tab's graph is unaffected).
    "spark.sql.maxPlanStringLength": "20000",
    "spark.sql.ui.explainMode": "simple",
    "spark.sql.ui.retainedExecutions": "100",
}


def local_env() -> None:
    """For scripts and tests that start Spark themselves: Python workers use this interpreter
    (the venv), nothing reaches for a model hub, tokenizers leave the cores to Spark's tasks."""
    for key, value in (("PYSPARK_PYTHON", sys.executable), ("PYSPARK_DRIVER_PYTHON", sys.executable),
                       ("HF_HUB_OFFLINE", "1"), ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
                       ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)


def with_delta(settings: dict[str, str], jars: list[str]) -> dict[str, str]:
    """`settings` plus what native Delta needs: the jars, the SQL extension and the catalog
    (kept beside any extensions or jars the profile already names), and SegLake's table defaults."""
    out = {**delta_jars.TABLE_DEFAULTS, **settings}
    listed = [j for j in out.get("spark.jars", "").split(",") if j]
    out["spark.jars"] = ",".join(listed + [j for j in jars if j not in listed])
    extensions = [e for e in out.get("spark.sql.extensions", "").split(",") if e]
    if delta_jars.DELTA_EXTENSION not in extensions:
        extensions.append(delta_jars.DELTA_EXTENSION)
    out["spark.sql.extensions"] = ",".join(extensions)
    out["spark.sql.catalog.spark_catalog"] = delta_jars.DELTA_CATALOG
    return out


def _delta_settings(settings: dict[str, str], engine: str) -> dict[str, str]:
    """For a session this process starts: native Delta unless the engine is delta-rs. With
    `auto`, jars that cannot be had mean delta-rs, said in one log line; `native` then fails."""
    if engine == "delta-rs" or delta_jars.DELTA_EXTENSION in settings.get("spark.sql.extensions", ""):
        return settings
    jars, why = delta_jars.ensure()
    if jars:
        return with_delta(settings, jars)
    if engine == "native":
        raise DeltaUnavailable(f"output.engine is native but the Delta jars cannot be had: {why}")
    log.warning("native Delta is unavailable, writing with delta-rs instead: %s", why)
    return settings


class DeltaUnavailable(RuntimeError):
    """engine native was asked for and the Delta jars cannot be had (a configuration error)."""


def build_session(spark_conf: dict, engine: str = "auto") -> SparkSession:
    """Get or create the session. A master set by spark-submit, Databricks or an existing
    session wins over the conf's `master`, which only applies to plain `python -m` runs.
    A session started here gets native Delta (jobs/delta_jars.py) unless `engine` is delta-rs;
    spark-submit.sh passes the same to sessions that spark-submit starts."""
    if "PYSPARK_PYTHON" not in os.environ:
        # Without it, Python workers start the system interpreter and miss the venv.
        os.environ["PYSPARK_PYTHON"] = sys.executable
    active = SparkSession.getActiveSession()
    builder = SparkSession.builder.appName(spark_conf.get("app_name") or "seglake")
    # spark-submit starts this Python with the gateway port in the environment, its --master in
    # the JVM; SparkConf() here cannot see the JVM's settings yet, so it would read as unset and
    # a profile's `local[2]` would silently keep a cluster submission on the driver machine.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if active is None and not submitted and not SparkConf().contains("spark.master") and spark_conf.get("master"):
        builder = builder.master(spark_conf["master"])
    settings = {**BASE_CONF, **{str(k): str(v) for k, v in (spark_conf.get("conf") or {}).items()}}
    if active is None and not submitted and not os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        settings = _delta_settings(settings, engine)
        settings = with_log4j2(settings)
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    if (active is not None or submitted) and engine != "delta-rs" and not os.environ.get("DATABRICKS_RUNTIME_VERSION") \
            and delta_jars.DELTA_EXTENSION not in spark.conf.get("spark.sql.extensions", ""):
        # A session we did not start: spark-submit.sh or the host decided; say what follows.
        why = f"this Spark session has no Delta (spark.sql.extensions lacks {delta_jars.DELTA_EXTENSION})"
        if engine == "native":
            raise DeltaUnavailable(f"output.engine is native but {why}; submit with spark-submit.sh, "
                                   "or --packages " + delta_jars.coordinate())
        log.warning("%s: writing with delta-rs", why)
    if active is not None:
        # An existing session (Databricks, notebooks, tests) keeps its static settings;
        # runtime SQL settings can still be applied: the profile's always, SegLake's defaults
        # (BASE_CONF) only where the host did not set that key itself.
        host = spark.sparkContext.getConf()
        profile = {str(k) for k in (spark_conf.get("conf") or {})}
        for key, value in settings.items():
            if key not in profile and key in BASE_CONF and host.contains(key):
                continue
            if key.startswith("spark.sql."):
                try:
                    spark.conf.set(key, value)
                except Exception:  # noqa: BLE001 - static or locked settings stay as they are
                    pass
    return spark


def log4j2_file() -> str | None:
    """SegLake's log4j2 configuration (conf/log4j2.properties), or $SEGLAKE_LOG4J2's; None
    when neither is there (an installed wheel without the repo: Spark's defaults apply)."""
    path = os.environ.get("SEGLAKE_LOG4J2") or os.path.join(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))), "conf", "log4j2.properties")
    return path if os.path.isfile(path) else None


def with_log4j2(settings: dict[str, str]) -> dict[str, str]:
    """`settings` plus the driver option that loads `log4j2_file()`, for a driver JVM this
    process starts (local mode). A profile's own spark.driver.extraJavaOptions is kept as is."""
    path = log4j2_file()
    if path is None or "log4j2.configurationFile" in settings.get("spark.driver.extraJavaOptions", ""):
        return settings
    option = f"-Dlog4j2.configurationFile=file:{path}"
    extra = settings.get("spark.driver.extraJavaOptions")
    return {**settings, "spark.driver.extraJavaOptions": f"{extra} {option}" if extra else option}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def setup_logging(level: str = "INFO") -> None:
    """Job logs to stderr with timestamps; chatty libraries only from WARNING up. The level is
    set even where a host (Databricks, pytest) installed its handlers first; then theirs print."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("py4j", "urllib3", "filelock", "mlflow", "alembic"):  # (alembic: MLflow's schema migrations)
        logging.getLogger(noisy).setLevel(logging.WARNING)

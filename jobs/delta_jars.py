"""The Delta Lake jars for Spark (delta-spark), resolved once and cached.

delta-spark's Python package holds no jars: Spark needs `io.delta:delta-spark_<spark>_2.13` and
its dependencies from Maven. We resolve them with Spark's own Ivy (what `--packages` does) at
set-up time (`make venv` runs `seglake-delta-jars`), keep them in a cache folder with a manifest,
and hand the jar files to every later session as `spark.jars`: a second run resolves nothing and
needs no network. Where they cannot be had (no Maven access, a locked-down cluster), `ensure`
says why, and the job's `auto` engine falls back to delta-rs (jobs/session.py).

Cache folder: $SEGLAKE_DELTA_JARS_DIR, else <venv>/share/seglake/delta-jars when the environment
is writable, else ~/.cache/seglake/delta-jars.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Delta 4.4.0 is the newest release with an artifact built for Spark 4.2 on Maven Central
# (delta-spark 4.4.1's Python package exists, its Spark 4.2 jar is not served). Keep the PyPI
# pin (requirements.txt) equal to this.
DELTA_VERSION = "4.4.0"
SCALA_VERSION = "2.13"

# The two session settings Delta needs (static: they must be set before the session starts).
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
SESSION_CONF = {"spark.sql.extensions": DELTA_EXTENSION, "spark.sql.catalog.spark_catalog": DELTA_CATALOG}

# Table properties every table SegLake creates gets by default: no table features that delta-rs
# or Sail cannot read (tests/test_delta_spark.py checks what each reader accepts).
TABLE_DEFAULTS = {
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
    "spark.databricks.delta.properties.defaults.columnMapping.mode": "none",
}


# Dependencies of the Delta artifacts that Spark's own jars already provide (newer versions):
# resolving them again would put a second Hadoop client and older Jackson/Parquet on the
# classpath (about 40 MB) for nothing.
PROVIDED_BY_SPARK = (
    "org.apache.hadoop:hadoop-client-api", "org.apache.hadoop:hadoop-client-runtime",
    "com.fasterxml.jackson.core:jackson-core", "com.fasterxml.jackson.core:jackson-databind",
    "com.fasterxml.jackson.core:jackson-annotations", "com.fasterxml.jackson.datatype:jackson-datatype-jdk8",
    "org.apache.parquet:parquet-column", "org.apache.parquet:parquet-common", "org.apache.parquet:parquet-encoding",
    "org.apache.parquet:parquet-format-structures", "org.apache.parquet:parquet-hadoop",
    "org.apache.parquet:parquet-jackson", "org.apache.logging.log4j:log4j-api", "org.apache.logging.log4j:log4j-core",
    "org.apache.logging.log4j:log4j-slf4j2-impl", "org.slf4j:slf4j-api", "org.xerial.snappy:snappy-java",
    "com.github.luben:zstd-jni", "org.roaringbitmap:RoaringBitmap", "org.roaringbitmap:shims",
    "commons-logging:commons-logging", "commons-pool:commons-pool", "io.airlift:aircompressor",
    "com.google.code.findbugs:jsr305", "javax.annotation:javax.annotation-api",
)
DEFAULT_REPOSITORY = "https://repo1.maven.org/maven2/"


def _ivy_settings(ivy_dir: Path) -> str:
    """Ivy settings with Maven Central (or $SEGLAKE_MAVEN_REPOSITORIES, comma-separated) only:
    Spark's defaults also try ~/.m2, whose half-filled folders (a POM without its jar) make
    resolution fail, and a spark-packages host that locked-down networks do not reach."""
    repos = [r.strip() for r in os.environ.get("SEGLAKE_MAVEN_REPOSITORIES", DEFAULT_REPOSITORY).split(",") if r.strip()]
    resolvers = "\n".join(f'      <ibiblio name="repo{i}" m2compatible="true" root="{r}"/>' for i, r in enumerate(repos))
    return f"""<ivysettings>
  <settings defaultResolver="seglake"/>
  <caches defaultCacheDir="{ivy_dir / 'cache'}"/>
  <resolvers>
    <chain name="seglake" returnFirst="true">
{resolvers}
    </chain>
  </resolvers>
</ivysettings>
"""


def spark_minor(version: str | None = None) -> str:
    if version is None:
        import pyspark

        version = pyspark.__version__
    return ".".join(version.split(".")[:2])


def coordinate(spark_version: str | None = None) -> str:
    """Maven coordinate of the Delta connector built for this Spark, e.g.
    io.delta:delta-spark_4.2_2.13:4.4.0 (Delta 4.x names its artifacts per Spark version)."""
    return f"io.delta:delta-spark_{spark_minor(spark_version)}_{SCALA_VERSION}:{DELTA_VERSION}"


def cache_dir() -> Path:
    env = os.environ.get("SEGLAKE_DELTA_JARS_DIR")
    if env:
        return Path(env)
    prefix = Path(sys.prefix) / "share" / "seglake" / "delta-jars"
    if sys.prefix != sys.base_prefix and os.access(sys.prefix, os.W_OK):  # a venv we may write to
        return prefix
    return Path.home() / ".cache" / "seglake" / "delta-jars"


def _manifest(directory: Path, coord: str) -> Path:
    return directory / (coord.replace(":", "_") + ".json")


def cached_jars(directory: Path | None = None, coord: str | None = None) -> list[str] | None:
    """The cached jar files for `coord`, or None when they are not all there."""
    directory = directory or cache_dir()
    coord = coord or coordinate()
    try:
        jars = json.loads(_manifest(directory, coord).read_text())["jars"]
    except (OSError, ValueError, KeyError):
        return None
    return jars if jars and all(Path(j).is_file() for j in jars) else None


def _resolve_here(directory: Path, coord: str) -> list[str]:
    """Resolve `coord` with Spark's Ivy into directory/ivy (runs in a child process: the JVM it
    starts carries the packages, which the caller's own session must not inherit)."""
    from pyspark.sql import SparkSession

    settings = directory / "ivysettings.xml"
    settings.write_text(_ivy_settings(directory / "ivy"))
    spark = (SparkSession.builder.master("local[1]").appName("seglake-delta-jars")
             .config("spark.jars.packages", coord)
             .config("spark.jars.excludes", ",".join(PROVIDED_BY_SPARK))
             .config("spark.jars.ivySettings", str(settings))
             .config("spark.jars.ivy", str(directory / "ivy"))
             .config("spark.ui.enabled", "false")
             .getOrCreate())
    try:
        listed = spark.sparkContext.getConf().get("spark.jars", "")
        # Check the jars really load: the Delta catalog class must be on the driver's classpath.
        spark.sparkContext._jvm.java.lang.Class.forName(
            DELTA_CATALOG, True, spark.sparkContext._jvm.Thread.currentThread().getContextClassLoader())
    finally:
        spark.stop()
    jars = sorted({j[len("file:"):] if j.startswith("file:") else j for j in listed.split(",") if j.endswith(".jar")})
    jars = [str(Path(j).resolve()) for j in jars]
    if not any("delta-spark" in Path(j).name for j in jars):
        raise RuntimeError(f"Ivy resolved no delta-spark jar for {coord} (got {jars})")
    return jars


def fetch(directory: Path | None = None, coord: str | None = None, timeout_s: float = 900) -> list[str]:
    """Resolve the Delta jars into the cache (Maven Central through Spark's Ivy) and write the
    manifest; returns the jar paths. Raises RuntimeError with Ivy's last lines when it fails."""
    directory = directory or cache_dir()
    coord = coord or coordinate()
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.delta_jars", "--resolve-in-process", "--dir", str(directory), "--coordinate", coord],
        capture_output=True, text=True, timeout=timeout_s,
        cwd=str(Path(__file__).resolve().parents[1]), env={**os.environ, "PYSPARK_SUBMIT_ARGS": "pyspark-shell"},
    )
    if proc.returncode != 0:
        tail = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()][-6:]
        raise RuntimeError(f"could not resolve {coord} from Maven: " + " | ".join(tail))
    jars = json.loads(proc.stdout.strip().splitlines()[-1])
    tmp = tempfile.NamedTemporaryFile("w", dir=directory, delete=False, suffix=".tmp")
    with tmp:
        json.dump({"coordinate": coord, "jars": jars}, tmp)
    os.replace(tmp.name, _manifest(directory, coord))  # atomic: a reader sees all or nothing
    return jars


def ensure(allow_fetch: bool = True) -> tuple[list[str] | None, str]:
    """(jar paths, "") when the Delta jars are cached or could be fetched now, else (None, why)."""
    jars = cached_jars()
    if jars:
        return jars, ""
    if not allow_fetch or os.environ.get("SEGLAKE_DELTA_JARS_OFFLINE") == "1":
        return None, f"the Delta jars are not cached in {cache_dir()} (run seglake-delta-jars)"
    try:
        return fetch(), ""
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seglake-delta-jars", description=(
        "Resolve the Delta Lake jars for this pyspark from Maven Central into a local cache, so that "
        "sessions start with native Delta and resolve nothing. Prints the jars, comma-separated "
        "(for spark-submit --jars)."))
    p.add_argument("--dir", type=Path, help=f"cache folder (default {cache_dir()})")
    p.add_argument("--coordinate", help=f"Maven coordinate (default {coordinate()})")
    p.add_argument("--cached-only", action="store_true", help="print the cached jars; exit 1 if there are none")
    p.add_argument("--resolve-in-process", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    directory = args.dir or cache_dir()
    coord = args.coordinate or coordinate()
    if args.resolve_in_process:
        print(json.dumps(_resolve_here(directory, coord)))
        return 0
    jars = cached_jars(directory, coord)
    if jars is None and not args.cached_only:
        try:
            jars = fetch(directory, coord)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            print(f"seglake-delta-jars: {exc}", file=sys.stderr)
            return 3
    if jars is None:
        return 1
    print(",".join(jars))
    return 0


if __name__ == "__main__":
    sys.exit(main())

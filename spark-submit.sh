#!/usr/bin/env bash
# Run a SegLake job through spark-submit: the full segmentation job (default) or, with
# `--job assign`, the incremental assign job (jobs/assign.py).
#
#   ./spark-submit.sh [--job segment|assign|finetune] [spark-submit options] [job options]
#
# Spark options (--master, --deploy-mode, --conf key=value, --executor-memory, --num-executors,
# --jars, --archives, --files, --name, --queue, ...) are passed to spark-submit; everything else
# goes to the job (see `python -m jobs.cli segment --help` / `python -m jobs.cli assign --help`). `--conf` with a key=value is a
# Spark setting; `--conf FILE.yaml` is the job's conf profile, which is shipped with --files.
# Local mode (local[2]) is the default when no --master is given.
#   --job NAME       segment (default), assign, or finetune (jobs/finetune.py)
#   --dry-run        print the spark-submit command instead of running it
#   --python PATH    Python for the driver and executors (default: .venv/bin/python if present)
#   --no-delta       the cluster provides Delta itself (its image or spark-defaults): add nothing
#   --python-env ARCHIVE
#                    a packed Python environment (tar.gz, e.g. made by venv-pack or conda-pack)
#                    shipped with --archives; executors (and, in cluster mode, the driver) run
#                    ./environment/bin/python from it. Without it, every node needs the packages
#                    at the same path (a cluster image).
# Delta: unless the engine (the profile's output.engine, or --engine) is delta-rs, the Delta jars
# (seglake-delta-jars' cache: --jars, nothing resolved at submit time; not cached: --packages
# io.delta:...) and the two session settings Delta needs are added. With engine auto, jars that
# cannot be had mean the job writes with delta-rs (one line says so).
# The conf profile's spark.conf settings are passed as --conf (static ones like spark.task.cpus
# or spark.task.resource.gpu.amount only work at submit time); --conf key=value flags given here
# come later and win.
#
# Examples:
#   ./spark-submit.sh --conf conf/local.yaml --texts data/sample/texts.csv --events data/sample/events.csv
#   ./spark-submit.sh --master yarn --deploy-mode cluster --conf spark.executor.memory=8g \
#       --conf conf/cluster.yaml --texts s3a://bucket/texts --texts-format parquet --output s3a://bucket/seglake
#   ./spark-submit.sh --job assign --conf conf/local.yaml --texts new/texts/ --output lakehouse
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
spark_args=()
job_args=()
master=""
deploy_mode="client"
dry_run=0
python_bin=""
conf_file=""
python_env=""
job="segment"
delta=1
engine_flag=""

# spark-submit options that take a value.
spark_opts=" --master --deploy-mode --class --name --jars --packages --exclude-packages --repositories
 --py-files --files --archives --properties-file --driver-memory --driver-java-options
 --driver-library-path --driver-class-path --driver-cores --executor-memory --executor-cores
 --num-executors --total-executor-cores --queue --principal --keytab --proxy-user "

while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --job)
      case "$2" in
        segment|assign|finetune) job="$2" ;;
        *) echo "spark-submit.sh: --job must be segment, assign or finetune, got '$2'" >&2; exit 2 ;;
      esac
      shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --python-env) python_env="$2"; shift 2 ;;
    --no-delta) delta=0; shift ;;
    --engine) engine_flag="$2"; job_args+=("$1" "$2"); shift 2 ;;
    --engine=*) engine_flag="${1#--engine=}"; job_args+=("$1"); shift ;;
    --master) master="$2"; shift 2 ;;
    --deploy-mode) deploy_mode="$2"; spark_args+=("$1" "$2"); shift 2 ;;
    --conf)
      if [[ "${2:-}" == *=* ]]; then spark_args+=("--conf" "$2"); else conf_file="$2"; fi
      shift 2 ;;
    --conf=*)
      v="${1#--conf=}"
      if [[ "$v" == *=* ]]; then spark_args+=("--conf" "$v"); else conf_file="$v"; fi
      shift ;;
    --verbose|--supervise) spark_args+=("$1"); shift ;;
    -h|--help)
      # This script's own usage (the header above), then the job's options.
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
      job_args+=("--help"); shift ;;
    *)
      if [[ "$spark_opts" == *" $1 "* ]]; then spark_args+=("$1" "$2"); shift 2
      else job_args+=("$1"); shift; fi ;;
  esac
done

master="${master:-local[2]}"
if [ -z "$python_bin" ] && [ -x "$here/.venv/bin/python" ]; then python_bin="$here/.venv/bin/python"; fi
python_bin="${python_bin:-python3}"

# Executors import jobs/ and udfs/ from this zip (built fresh so it matches the checkout).
mkdir -p "$here/build"
pyfiles="$here/build/seglake-pyfiles.zip"
if [ "$dry_run" -eq 0 ]; then
  (cd "$here" && "$python_bin" - "$pyfiles" <<'PY'
import pathlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as z:
    for pkg in ("jobs", "udfs"):
        for f in sorted(pathlib.Path(pkg).rglob("*.py")):
            z.write(f)
PY
  )
fi

profile_conf=()
if [ -n "$conf_file" ]; then
  [ -f "$conf_file" ] || { echo "spark-submit.sh: conf profile not found: $conf_file" >&2; exit 2; }
  # The profile's spark.conf, one key=value a line (booleans as Spark spells them).
  settings="$("$python_bin" - "$conf_file" <<'PY'
import sys, yaml
with open(sys.argv[1], encoding="utf-8") as fh:
    data = yaml.safe_load(fh) or {}
for key, value in (((data.get("spark") or {}).get("conf")) or {}).items():
    print(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
PY
)" || { echo "spark-submit.sh: cannot read spark.conf from $conf_file with $python_bin (needs PyYAML)" >&2; exit 2; }
  while IFS= read -r line; do [ -n "$line" ] && profile_conf+=("--conf" "$line"); done <<< "$settings"
  spark_args+=("--files" "$conf_file")
  # In cluster deploy mode the driver runs remotely and finds the shipped file by its name.
  if [ "$deploy_mode" = "cluster" ]; then job_args=("--conf" "$(basename "$conf_file")" "${job_args[@]}")
  else job_args=("--conf" "$conf_file" "${job_args[@]}"); fi
fi

# The Delta engine: --engine, else the profile's output.engine, else auto.
engine="$engine_flag"
if [ -z "$engine" ] && [ -n "$conf_file" ]; then
  engine="$("$python_bin" - "$conf_file" <<'PY'
import sys, yaml
with open(sys.argv[1], encoding="utf-8") as fh:
    print(((yaml.safe_load(fh) or {}).get("output") or {}).get("engine") or "auto")
PY
)" || engine=""
fi
engine="${engine:-auto}"
delta_conf=()
if [ "$delta" -eq 1 ] && [ "$engine" != "delta-rs" ]; then
  jars="$(cd "$here" && "$python_bin" -m jobs.delta_jars --cached-only 2>/dev/null)" || jars=""
  if [ -z "$jars" ] && [ "$dry_run" -eq 0 ] && [ "$engine" = "auto" ]; then
    # Not cached yet: resolve now (Maven Central); where that fails, the job uses delta-rs.
    jars="$(cd "$here" && "$python_bin" -m jobs.delta_jars 2>/tmp/seglake-delta-jars.err)" || {
      echo "spark-submit.sh: native Delta unavailable ($(tail -n 1 /tmp/seglake-delta-jars.err)): the job writes with delta-rs" >&2
      jars=""; delta=0; }
  fi
  if [ "$delta" -eq 1 ]; then
    if [ -n "$jars" ]; then delta_conf=(--jars "$jars")
    else delta_conf=(--packages "$(cd "$here" && "$python_bin" -c 'from jobs.delta_jars import coordinate; print(coordinate())')")
    fi
    delta_conf+=(--conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
                 --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog
                 --conf spark.databricks.delta.properties.defaults.enableDeletionVectors=false)
  fi
fi

env_conf=()
if [ -n "$python_env" ]; then
  [ "$dry_run" -eq 1 ] || [ -f "$python_env" ] || { echo "spark-submit.sh: --python-env archive not found: $python_env" >&2; exit 2; }
  env_conf=(--archives "$python_env#environment" --conf spark.pyspark.python=./environment/bin/python)
  if [ "$deploy_mode" = "cluster" ]; then
    # The driver runs on the cluster too: it unpacks the same archive.
    env_conf+=(--conf spark.pyspark.driver.python=./environment/bin/python
               --conf spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python
               --conf spark.kubernetes.driverEnv.PYSPARK_PYTHON=./environment/bin/python)
  fi
fi
all_conf=" ${profile_conf[*]-} ${spark_args[*]-} "
if [[ "$master" == k8s://* ]] && [[ "$all_conf" != *"spark.kubernetes.container.image="* ]]; then
  echo "spark-submit.sh: a k8s:// master needs --conf spark.kubernetes.container.image=IMAGE (an image with" \
       "Spark, Python and the job's packages, or a Spark image plus --python-env)" >&2
  exit 2
fi

if [[ "$master" == local* ]]; then
  # Local mode: driver and workers use this Python (the venv), so its packages are visible.
  export PYSPARK_PYTHON="$python_bin" PYSPARK_DRIVER_PYTHON="$python_bin"
fi
submit="${SPARK_SUBMIT:-}"
if [ -z "$submit" ]; then
  if [ -n "${SPARK_HOME:-}" ]; then submit="$SPARK_HOME/bin/spark-submit"
  elif [ -x "$here/.venv/bin/spark-submit" ]; then submit="$here/.venv/bin/spark-submit"
  else submit="spark-submit"; fi
fi

log_conf=()
log4j2="${SEGLAKE_LOG4J2:-$here/conf/log4j2.properties}"
if [ "$deploy_mode" != "cluster" ] && [ -f "$log4j2" ] && [[ "$all_conf" != *"--driver-java-options"* ]] \
   && [[ "$all_conf" != *"spark.driver.extraJavaOptions="* ]]; then
  # The driver runs here: SegLake's log4j2 settings (WARN and up, without the noise a user cannot act on).
  log_conf=(--driver-java-options "-Dlog4j2.configurationFile=file:$log4j2")
fi

cmd=("$submit" --master "$master"
     --conf spark.python.worker.reuse=true
     --conf spark.sql.execution.arrow.pyspark.enabled=true
     --conf spark.executorEnv.HF_HUB_OFFLINE=1
     --conf spark.executorEnv.TOKENIZERS_PARALLELISM=false
     --py-files "$pyfiles"
     ${delta_conf[@]+"${delta_conf[@]}"}
     ${log_conf[@]+"${log_conf[@]}"}
     ${profile_conf[@]+"${profile_conf[@]}"}
     ${env_conf[@]+"${env_conf[@]}"}
     ${spark_args[@]+"${spark_args[@]}"}
     "$here/jobs/cli.py" "$job"
     ${job_args[@]+"${job_args[@]}"})

if [ "$dry_run" -eq 1 ]; then
  printf '%q ' "${cmd[@]}"; echo
  exit 0
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "${cmd[@]}"

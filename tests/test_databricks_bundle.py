"""The Databricks Asset Bundle (databricks.yml + resources/*.yml): the fields SegLake uses are
well-formed and point at real things (the wheel's console scripts, the jobs' flags, the conf
profile, declared variables). The Databricks CLI is not available here, so this is the check;
and the wheel the bundle builds does build, offline."""
from __future__ import annotations

import glob
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VAR = re.compile(r"\$\{var\.([A-Za-z_][A-Za-z0-9_]*)\}")


@pytest.fixture(scope="module")
def bundle() -> dict:
    main = yaml.safe_load((ROOT / "databricks.yml").read_text(encoding="utf-8"))
    resources: dict = {}
    for pattern in main["include"]:
        files = sorted(glob.glob(str(ROOT / pattern)))
        assert files, pattern
        for f in files:
            for kind, items in yaml.safe_load(Path(f).read_text(encoding="utf-8"))["resources"].items():
                resources.setdefault(kind, {}).update(items)
    return {**main, "resources": resources}


def _console_scripts() -> dict[str, str]:
    text = (ROOT / "setup.py").read_text(encoding="utf-8")
    return dict(re.findall(r'"([a-z-]+)=([a-z_.]+:[a-z_]+)"', text))


def _resolve(value: str, variables: dict) -> str:
    return VAR.sub(lambda m: str(variables[m.group(1)]["default"]), value).replace(
        "${workspace.file_path}", str(ROOT))


def test_bundle_top_level(bundle):
    assert bundle["bundle"]["name"] == "seglake"
    art = bundle["artifacts"]["seglake_wheel"]
    assert art["type"] == "whl" and art["path"] == "." and "wheel" in art["build"] and "dist" in art["build"]
    assert {"dev", "prod"} <= set(bundle["targets"]) and bundle["targets"]["dev"].get("default") is True
    for name, spec in bundle["variables"].items():
        assert spec.get("description") and "default" in spec, name


def test_every_job_is_a_wheel_task_of_a_real_entry_point(bundle):
    from jobs import cli, config

    scripts = _console_scripts()
    parsers = {"seglake-segment": (lambda a: cli.segment_parser().parse_args(a)), "seglake-assign": (lambda a: cli.assign_parser().parse_args(a))}
    jobs = bundle["resources"]["jobs"]
    assert {"seglake_segment", "seglake_segment_gpu", "seglake_assign"} <= set(jobs)
    variables = bundle["variables"]
    for key, job in jobs.items():
        clusters = {c["job_cluster_key"]: c["new_cluster"] for c in job["job_clusters"]}
        for task in job["tasks"]:
            assert task["job_cluster_key"] in clusters, key
            wheel = task["python_wheel_task"]
            assert wheel["package_name"] == "seglake" and wheel["entry_point"] in scripts, key
            assert task["libraries"] == [{"whl": "../dist/*.whl"}]  # what the artifact build writes
            params = [_resolve(str(p), variables) for p in wheel["parameters"]]
            for p in wheel["parameters"]:
                assert set(VAR.findall(str(p))) <= set(variables), p
            # The job's own parser accepts the parameters; the conf profile loads with them.
            args = parsers[wheel["entry_point"]](params)
            assert args.texts_format == "table" and args.events_format == "table"
            overrides = (cli.segment_overrides(args) if wheel["entry_point"] == "seglake-segment"
                         else cli.assign_overrides(args))
            conf = config.load(args.conf, overrides, job="segment" if "segment" in wheel["entry_point"] else "assign")
            assert conf["output"]["engine"] == "native"  # the runtime has Delta: native writes
            assert conf["output"]["catalog_schema"] is None  # the variable's default "": read by path
        for cluster in clusters.values():
            for field in ("spark_version", "node_type_id", "num_workers"):
                assert field in cluster, (key, field)
    gpu = jobs["seglake_segment_gpu"]["job_clusters"][0]["new_cluster"]
    assert "gpu" in _resolve(gpu["spark_version"], variables)
    assert float(gpu["spark_conf"]["spark.task.resource.gpu.amount"]) <= 1
    # Segmentation runs are MLflow runs in a workspace experiment (Databricks names them by path).
    for key in ("seglake_segment", "seglake_segment_gpu"):
        env = jobs[key]["job_clusters"][0]["new_cluster"]["spark_env_vars"]
        assert set(VAR.findall(env["MLFLOW_EXPERIMENT_NAME"])) <= set(variables)
        assert _resolve(env["MLFLOW_EXPERIMENT_NAME"], variables).startswith("/")
    # The daily assign job reads only what is new: a stream over the tables, run to the end.
    params = jobs["seglake_assign"]["tasks"][0]["python_wheel_task"]["parameters"]
    assert "--stream" in params and params[params.index("--trigger") + 1] == "available-now"


def test_the_wheel_builds_offline_with_every_entry_point(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("seglake-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "jobs/segment_users.py" in names and "udfs/embedding.py" in names and "jobs/recommend.py" in names
    for script, target in _console_scripts().items():
        assert f"{script} = {target}" in entry_points

"""deploy/: the manifests parse, have the shapes Kubernetes and the dask-kubernetes operator
expect, run arguments the real CLI accepts, use the images the Dockerfiles build and ask for
the memory the calculator predicts; the Dockerfiles are multi-stage and smoke-test the CLI;
the archive writes to an fsspec URL.

No container engine or Kubernetes API server runs here: the images are not built and the
manifests are not applied. These tests check what can be checked without them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401
import xarray as xr
import yaml

from flows.cli import build_parser
from pipeline.archive import ArchiveConfig, open_archive, write_archive

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # tomllib is Python >= 3.11; 3.10 is supported
VERSION = re.search(r'^version = "([^"]+)"', PYPROJECT, flags=re.MULTILINE)[1]  # type: ignore[index]
#: What the operator puts in the environment of the pods it creates.
OPERATOR_ENV = {
    "DASK_SCHEDULER_ADDRESS": "tcp://phyvlm-run-scheduler:8786",
    "DASK_WORKER_NAME": "w-0",
}


# ------------------------------------------------------------------------------------------------
# Schemas of the fields that matter
# ------------------------------------------------------------------------------------------------

_QUANTITY = {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti)?$"}
_RESOURCE_LIST = {
    "type": "object",
    "required": ["cpu", "memory"],
    "properties": {"cpu": _QUANTITY, "memory": _QUANTITY, "nvidia.com/gpu": {"type": "integer"}},
    "additionalProperties": False,
}
_CONTAINER = {
    "type": "object",
    "required": ["name", "image", "resources"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9-]+$"},
        "image": {"type": "string", "pattern": r"^[a-z0-9./-]+:[0-9A-Za-z.-]+$"},
        "command": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "envFrom": {"type": "array"},
        "resources": {
            "type": "object",
            "required": ["requests", "limits"],
            "properties": {"requests": _RESOURCE_LIST, "limits": _RESOURCE_LIST},
        },
    },
}
_POD_SPEC = {
    "type": "object",
    "required": ["containers"],
    "properties": {
        "containers": {"type": "array", "items": _CONTAINER, "minItems": 1},
        "serviceAccountName": {"const": "phyvlm-runner"},
        "restartPolicy": {"enum": ["Never", "OnFailure", "Always"]},
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}},
}
_SCHEDULER = {
    "type": "object",
    "required": ["spec", "service"],
    "properties": {
        "spec": _POD_SPEC,
        "service": {
            "type": "object",
            "required": ["selector", "ports"],
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["dask.org/cluster-name", "dask.org/component"],
                    "properties": {"dask.org/component": {"const": "scheduler"}},
                },
                "ports": {"type": "array", "contains": {"properties": {"port": {"const": 8786}}}},
            },
        },
    },
}
_WORKER = {
    "type": "object",
    "required": ["replicas", "spec"],
    "properties": {"replicas": {"type": "integer", "minimum": 0}, "spec": _POD_SPEC},
}
_CLUSTER_SPEC = {
    "type": "object",
    "required": ["worker", "scheduler"],
    "properties": {"worker": _WORKER, "scheduler": _SCHEDULER},
}
_DASK_API = {"const": "kubernetes.dask.org/v1"}


def _kind(api: Any, kind: str, spec: dict, **extra: Any) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", *extra.pop("required", ["spec"])],
        "properties": {
            "apiVersion": api,
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
            **extra,
        },
    }


SCHEMAS: dict[str, dict] = {
    "DaskCluster": _kind(_DASK_API, "DaskCluster", _CLUSTER_SPEC),
    "DaskJob": _kind(
        _DASK_API,
        "DaskJob",
        {
            "type": "object",
            "required": ["job", "cluster"],
            "properties": {
                "job": {"type": "object", "required": ["spec"], "properties": {"spec": _POD_SPEC}},
                "cluster": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {"spec": _CLUSTER_SPEC},
                },
            },
        },
    ),
    "DaskWorkerGroup": _kind(
        _DASK_API,
        "DaskWorkerGroup",
        {
            "type": "object",
            "required": ["cluster", "worker"],
            "properties": {"cluster": {"type": "string"}, "worker": _WORKER},
        },
    ),
    "DaskAutoscaler": _kind(
        _DASK_API,
        "DaskAutoscaler",
        {
            "type": "object",
            "required": ["cluster", "minimum", "maximum"],
            "properties": {
                "minimum": {"type": "integer", "minimum": 0},
                "maximum": {"type": "integer", "minimum": 1},
            },
        },
    ),
    "CronJob": _kind(
        {"const": "batch/v1"},
        "CronJob",
        {
            "type": "object",
            "required": ["schedule", "jobTemplate", "concurrencyPolicy"],
            "properties": {
                "schedule": {"type": "string"},
                "concurrencyPolicy": {"const": "Forbid"},
                "jobTemplate": {
                    "type": "object",
                    "required": ["spec"],
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["template"],
                            "properties": {
                                "template": {
                                    "type": "object",
                                    "required": ["spec"],
                                    "properties": {"spec": _POD_SPEC},
                                }
                            },
                        }
                    },
                },
            },
        },
    ),
    "ConfigMap": _kind(
        {"const": "v1"},
        "ConfigMap",
        {},
        required=["data"],
        data={
            "type": "object",
            "additionalProperties": {"type": "string"},
            "propertyNames": {"pattern": "^PHYVLM_[A-Z_]+$"},
        },
    ),
    "ServiceAccount": _kind({"const": "v1"}, "ServiceAccount", {}, required=[]),
    "Role": _kind(
        {"const": "rbac.authorization.k8s.io/v1"},
        "Role",
        {},
        required=["rules"],
        rules={"type": "array", "minItems": 1},
    ),
    "RoleBinding": _kind(
        {"const": "rbac.authorization.k8s.io/v1"},
        "RoleBinding",
        {},
        required=["subjects", "roleRef"],
    ),
}


def _documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path.name, doc))
    return docs


def _one(kind: str, name: str | None = None) -> dict:
    found = [
        d for _, d in _documents() if d["kind"] == kind and name in (None, d["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _containers(doc: dict) -> list[dict]:
    """Every container of a manifest, wherever its pod specs are."""
    found: list[dict] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "containers":
                    found.extend(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


# ------------------------------------------------------------------------------------------------
# Manifests
# ------------------------------------------------------------------------------------------------


def test_every_manifest_parses_and_matches_its_schema():
    docs = _documents()
    kinds = sorted(d["kind"] for _, d in docs)
    assert kinds == sorted(
        ["ConfigMap", "CronJob", "DaskAutoscaler", "DaskCluster", "DaskJob", "DaskWorkerGroup"]
        + ["Role", "RoleBinding", "ServiceAccount"]
    )
    for name, doc in docs:
        try:
            jsonschema.validate(doc, SCHEMAS[doc["kind"]])
        except jsonschema.ValidationError as exc:
            pytest.fail(
                f"{name}: {doc['kind']} {doc['metadata'].get('name')}: {exc.message} at {list(exc.path)}"
            )


def test_schemas_reject_what_kubernetes_or_the_operator_would():
    cluster = _one("DaskCluster")
    broken = yaml.safe_load(yaml.safe_dump(cluster))
    del broken["spec"]["scheduler"]["service"]
    with pytest.raises(jsonschema.ValidationError, match="'service' is a required property"):
        jsonschema.validate(broken, SCHEMAS["DaskCluster"])
    broken = yaml.safe_load(yaml.safe_dump(cluster))
    broken["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = "16GB"
    with pytest.raises(jsonschema.ValidationError, match="does not match"):
        jsonschema.validate(broken, SCHEMAS["DaskCluster"])


def test_kustomization_lists_the_manifests_and_maps_both_images():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {"configmap.yaml", "rbac.yaml", "daskcluster.yaml", "cronjob.yaml"}
    assert all((K8S / name).is_file() for name in listed)
    # The one-off DaskJob is applied by hand (it starts a run); it must still be a real file.
    assert (K8S / "daskjob.yaml").is_file()
    assert {i["name"] for i in kustomization["images"]} == {"phyvlm-cr", "phyvlm-cr-cuda"}
    assert {i["newTag"] for i in kustomization["images"]} == {VERSION}


def test_the_gpu_workers_ask_for_a_gpu_and_run_the_cuda_image():
    group = _one("DaskWorkerGroup")
    assert group["spec"]["cluster"] == _one("DaskCluster")["metadata"]["name"]
    (worker,) = _containers(group)
    assert worker["image"].startswith("phyvlm-cr-cuda:")
    assert worker["command"] == ["dask", "cuda", "worker"]
    for part in ("requests", "limits"):
        assert worker["resources"][part]["nvidia.com/gpu"] == 1
    tolerations = group["spec"]["worker"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def _gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "GiB": 1.0}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]+)", quantity).groups()  # type: ignore[union-attr]
    return float(number) * units[unit]


def test_worker_memory_fits_the_calculated_peak_of_a_tile_chunk():
    """Requests >= the calculator's peak (pipeline/bench/memory.py), Dask's limit < the pod's."""
    from pipeline.bench.memory import estimate_memory
    from pipeline.kernels._fusion import FusionConfig
    from pipeline.priors import PhysicsPrior

    config = _one("ConfigMap")["data"]
    bands = len(config["PHYVLM_BANDS"].split(","))
    halo = PhysicsPrior().halo + FusionConfig().halo
    workers = [c for _, d in _documents() for c in _containers(d) if c["name"] == "worker"]
    assert len(workers) == 3  # DaskCluster, its GPU group, the DaskJob's cluster
    for worker in workers:
        args = dict(
            a.lstrip("-").split("=", 1) for a in worker["args"] if a.startswith("--") and "=" in a
        )
        threads = int(args.get("nthreads", 1))
        peak = (
            estimate_memory(
                int(config["PHYVLM_CHUNK_SIZE"]), 12, bands, halo=halo, threads_per_worker=threads
            ).worker_bytes
            / 2**30
        )
        request = _gib(worker["resources"]["requests"]["memory"])
        limit = _gib(worker["resources"]["limits"]["memory"])
        dask_limit = _gib(args["memory-limit"])
        assert peak <= request <= dask_limit < limit, (
            worker["image"],
            peak,
            request,
            dask_limit,
            limit,
        )


# ------------------------------------------------------------------------------------------------
# The arguments the pods run, through the real CLI parser
# ------------------------------------------------------------------------------------------------


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes $(VAR) expansion (an unknown name is left as it is, as Kubernetes does)."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m[1], m[0]), text)


def test_the_daskjob_runs_the_configmap_flags_through_the_cli():
    job = _one("DaskJob")
    config = _one("ConfigMap")["data"]
    (container,) = job["spec"]["job"]["spec"]["containers"]
    assert container["command"] == ["phyvlm-cr"]
    assert {"configMapRef": {"name": _one("ConfigMap")["metadata"]["name"]}} in container["envFrom"]
    argv = [_expand(a, {**config, **OPERATOR_ENV}) for a in container["args"]]
    assert not [a for a in argv if "$(" in a], (
        "every $(VAR) must come from the ConfigMap or the operator"
    )
    args = build_parser().parse_args(argv)
    assert args.command == "run"
    assert args.bbox == tuple(float(v) for v in config["PHYVLM_BBOX"].split(","))
    assert args.datetime == config["PHYVLM_DATETIME"]
    assert args.output == config["PHYVLM_STORE"] and args.output.startswith(
        ("az://", "s3://", "gs://")
    )
    assert args.scheduler == OPERATOR_ENV["DASK_SCHEDULER_ADDRESS"]
    assert args.bands == tuple(config["PHYVLM_BANDS"].split(","))
    assert args.chunk_size == int(config["PHYVLM_CHUNK_SIZE"]) and args.resume
    assert args.on_read_error == config["PHYVLM_ON_READ_ERROR"]
    # every ConfigMap key is used by the one-off job
    used = set(re.findall(r"\$\((PHYVLM_[A-Z_]+)\)", " ".join(container["args"])))
    assert used == set(config)


def test_the_cronjob_runs_last_month_through_the_cli_against_the_cluster():
    cron = _one("CronJob")
    config = _one("ConfigMap")["data"]
    (container,) = _containers(cron)
    assert container["command"] == ["/bin/sh", "-c"]
    script = container["args"][0]
    assert 'month=$(date -u -d "$(date -u +%Y-%m-01) -1 month" +%Y-%m)' in script
    line = script[script.index("exec phyvlm-cr run") :].replace("\\\n", " ")
    env = {**config, "month": "2026-10"}
    expanded = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env[m[1]], line)
    argv = shlex.split(expanded)[2:]  # drop "exec phyvlm-cr"
    args = build_parser().parse_args(argv)
    assert args.command == "run" and args.datetime == "2026-10"
    assert args.mode == "composite" and args.period == "monthly" and args.resume
    cluster = _one("DaskCluster")
    service = cluster["spec"]["scheduler"]["service"]
    port = next(p["port"] for p in service["ports"] if p["name"] == "tcp-comm")
    # the operator names the scheduler Service "<cluster>-scheduler"
    assert args.scheduler == f"tcp://{cluster['metadata']['name']}-scheduler:{port}"
    assert args.output == config["PHYVLM_STORE"]


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
_CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def _valid_cron(schedule: str) -> bool:
    fields = schedule.split()
    if len(fields) != 5:
        return False
    for field, (low, high) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.match(field):
            return False
        numbers = [int(n) for n in re.findall(r"(?<![/\d])\d+", field)]
        if any(not low <= n <= high for n in numbers):
            return False
    return True


def test_the_cron_schedule_is_valid_and_monthly():
    schedule = _one("CronJob")["spec"]["schedule"]
    assert _valid_cron(schedule)
    assert schedule.split()[2:] == ["2", "*", "*"]  # the 2nd of every month
    for bad in ("0 3 2 *", "61 3 2 * *", "0 24 * * *", "0 3 0 * *", "@monthly x", "0 3 2 13 *"):
        assert not _valid_cron(bad), bad
    assert _valid_cron("*/15 0-6,22 1 */2 1-5")


# ------------------------------------------------------------------------------------------------
# Images and Dockerfiles
# ------------------------------------------------------------------------------------------------

DOCKERFILES = {"phyvlm-cr": DEPLOY / "Dockerfile", "phyvlm-cr-cuda": DEPLOY / "Dockerfile.cuda"}


def _label(dockerfile: Path, key: str) -> str:
    match = re.search(rf'{re.escape(key)}="([^"]+)"', dockerfile.read_text())
    assert match, f"{dockerfile.name} has no LABEL {key}"
    return match[1]


def test_manifests_use_the_images_the_dockerfiles_build():
    built = {
        f"{_label(path, 'org.opencontainers.image.title')}:{_label(path, 'org.opencontainers.image.version')}"
        for path in DOCKERFILES.values()
    }
    assert built == {f"phyvlm-cr:{VERSION}", f"phyvlm-cr-cuda:{VERSION}"}
    used = {c["image"] for _, d in _documents() for c in _containers(d)}
    assert used == built


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfiles_are_multi_stage_and_smoke_test_the_cli(name):
    text = DOCKERFILES[name].read_text()
    stages = re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE | re.IGNORECASE)
    assert len(stages) >= 2 and stages[0] == "build"
    assert re.search(r"^COPY --from=build ", text, flags=re.MULTILINE)
    last_stage = text[text.rindex("\nFROM ") :]
    runs = " ".join(re.findall(r"^RUN ((?:.*\\\n)*.*)$", last_stage, flags=re.MULTILINE))
    assert (
        "phyvlm-cr --help" in runs and "phyvlm-cr -q demo" in runs
    )  # smoke test in the final image
    assert re.search(r"^USER (?!root)\w+", last_stage, flags=re.MULTILINE)  # not root at run time
    extras = re.search(r'pip install "\$\{whl\}\[([a-z,]+)\]"', last_stage)
    assert extras and "cloud" in extras[1].split(",")
    if name.endswith("cuda"):
        assert "gpu" in extras[1].split(",")
        assert re.search(r"^FROM nvidia/cuda:\S+-runtime-", last_stage.lstrip(), flags=re.MULTILINE)
        assert "download.pytorch.org/whl/cu" in last_stage and "torch.version.cuda" in runs


def test_the_cloud_extra_holds_the_object_store_backends():
    extra = re.search(r"^cloud = \[(.*)\]$", PYPROJECT, flags=re.MULTILINE)
    assert extra, "pyproject.toml has no `cloud` extra"
    cloud = {re.split(r"[<>=\[]", dep.strip().strip('"'))[0] for dep in extra[1].split(",")}
    assert cloud == {"adlfs", "s3fs", "gcsfs"}
    base = PYPROJECT[
        PYPROJECT.index("dependencies = [") : PYPROJECT.index("[project.optional-dependencies]")
    ]
    assert not any(f'"{name}' in base for name in cloud)


# ------------------------------------------------------------------------------------------------
# The store on an fsspec URL
# ------------------------------------------------------------------------------------------------


def test_write_archive_to_an_fsspec_url():
    import fsspec

    rng = np.random.default_rng(3)
    ny, nx, nt = 40, 60, 2
    ds = xr.Dataset(
        {
            "B04": (("time", "y", "x"), rng.random((nt, ny, nx), dtype="float32")),
            "no_valid_observation": (("time", "y", "x"), np.zeros((nt, ny, nx), dtype="uint8")),
        },
        coords={
            "time": pd.date_range("2024-05-01", periods=nt, freq="MS"),
            "y": 5352335.0 - 10 * np.arange(ny),
            "x": 359135.0 + 10 * np.arange(nx),
        },
    ).rio.write_crs("EPSG:32633")
    store = "memory://phyvlm-deploy-test/out.zarr"
    fs = fsspec.filesystem("memory")
    if fs.exists("/phyvlm-deploy-test"):
        fs.rm("/phyvlm-deploy-test", recursive=True)
    try:
        summary = write_archive(
            ds.chunk({"y": 32, "x": 32}), store, ArchiveConfig(chunk_size=32), progress=False
        )
        assert summary["regions_written"] == 2 * 2
        back = open_archive(store)
        assert back.rio.crs.to_epsg() == 32633
        np.testing.assert_array_equal(back["B04"].values, ds["B04"].values)
        with pytest.raises(Exception, match="already exists"):
            write_archive(ds, store, ArchiveConfig(chunk_size=32), progress=False)
    finally:
        fs.rm("/phyvlm-deploy-test", recursive=True)

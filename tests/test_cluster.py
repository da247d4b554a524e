"""Cluster factories: a local cluster by default, attaching to an existing scheduler, clear errors."""

from __future__ import annotations

import socket

import pytest
from distributed import LocalCluster

from pipeline.cluster import SINGLE_THREADED_LIBS, ClusterConfig, dask_client


def test_local_cluster_has_the_configured_workers_and_single_threaded_libs():
    config = ClusterConfig(n_workers=2, threads_per_worker=1, dashboard_address="127.0.0.1:0")
    with dask_client(config) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        assert sum(client.nthreads().values()) == 2
        env = client.run(lambda: __import__("os").environ.get("OMP_NUM_THREADS"))
        assert set(env.values()) == {SINGLE_THREADED_LIBS["OMP_NUM_THREADS"]}
        assert client.dashboard_link.startswith("http://127.0.0.1:")


def test_attach_to_an_existing_scheduler_leaves_it_running():
    with LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address="127.0.0.1:0"
    ) as cluster:
        with dask_client(
            ClusterConfig(kind="address", address=cluster.scheduler_address)
        ) as client:
            assert client.submit(lambda x: x + 1, 41).result() == 42
        # the cluster we attached to is not ours to close
        assert cluster.status.name == "running"


def test_unreachable_scheduler_names_the_address_and_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"127.0.0.1:{port}.*drop --scheduler"):
        with dask_client(
            ClusterConfig(kind="address", address=f"tcp://127.0.0.1:{port}", connect_timeout_s=2)
        ):
            pass


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="needs an address"):
        ClusterConfig(kind="address")
    with pytest.raises(ValueError, match="unknown cluster kind"):
        ClusterConfig(kind="slurm")  # type: ignore[arg-type]


def _deploy_images() -> set[str]:
    """Images of the dask-kubernetes DaskCluster in deploy/k8s (scheduler and CPU workers)."""
    from pathlib import Path

    import yaml

    manifest = Path(__file__).resolve().parents[1] / "deploy" / "k8s" / "daskcluster.yaml"
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    cluster = next(d for d in docs if d.get("kind") == "DaskCluster")
    spec = cluster["spec"]
    return {
        c["image"]
        for part in (spec["scheduler"]["spec"], spec["worker"]["spec"])
        for c in part["containers"]
    }


def test_the_kubernetes_factory_runs_the_image_deploy_builds(monkeypatch):
    from pipeline.cluster import kubernetes_cluster_spec

    monkeypatch.delenv("PHYVLM_KUBERNETES_IMAGE", raising=False)
    spec = kubernetes_cluster_spec(ClusterConfig(kind="kubernetes", n_workers=3))
    pods = [spec["spec"]["scheduler"]["spec"], spec["spec"]["worker"]["spec"]]
    images = {c["image"] for pod in pods for c in pod["containers"]}
    assert images == _deploy_images()
    assert spec["spec"]["worker"]["replicas"] == 3
    env = {e["name"]: e["value"] for e in pods[1]["containers"][0]["env"]}
    assert env == SINGLE_THREADED_LIBS


def test_the_kubernetes_image_is_set_by_flag_or_environment(monkeypatch):
    from flows.cli import _cluster_config, build_parser
    from pipeline.cluster import kubernetes_cluster_spec

    def pod_images(argv: list[str]) -> set[str]:
        args = build_parser().parse_args(
            ["run", "--bbox", "13,48,13.1,48.1", "--datetime", "2024-05", "-o", "x.zarr", *argv]
        )
        spec = kubernetes_cluster_spec(_cluster_config(args))
        pods = [spec["spec"]["scheduler"]["spec"], spec["spec"]["worker"]["spec"]]
        return {c["image"] for pod in pods for c in pod["containers"]}

    flag = ["--cluster", "kubernetes", "--kubernetes-image", "registry.example/phyvlm-cr:9.9"]
    assert pod_images(flag) == {"registry.example/phyvlm-cr:9.9"}
    monkeypatch.setenv("PHYVLM_KUBERNETES_IMAGE", "registry.example/phyvlm-cr:env")
    assert pod_images(["--cluster", "kubernetes"]) == {"registry.example/phyvlm-cr:env"}
    with pytest.raises(ValueError, match="--kubernetes-image is for --cluster kubernetes"):
        pod_images(["--kubernetes-image", "x:1"])
    with pytest.raises(ValueError, match="not an image reference"):
        ClusterConfig(kind="kubernetes", kubernetes_image="phyvlm cr")

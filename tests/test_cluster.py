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
        with dask_client(ClusterConfig(kind="address", address=cluster.scheduler_address)) as client:
            assert client.submit(lambda x: x + 1, 41).result() == 42
        # the cluster we attached to is not ours to close
        assert cluster.status.name == "running"


def test_unreachable_scheduler_names_the_address_and_the_fix():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=rf"127.0.0.1:{port}.*drop --scheduler"):
        with dask_client(ClusterConfig(kind="address", address=f"tcp://127.0.0.1:{port}", connect_timeout_s=2)):
            pass


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="needs an address"):
        ClusterConfig(kind="address")
    with pytest.raises(ValueError, match="unknown cluster kind"):
        ClusterConfig(kind="slurm")  # type: ignore[arg-type]

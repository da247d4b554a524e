"""Dask cluster factories: local CPU (default), an existing scheduler, CUDA nodes, Kubernetes.

``dask_client(config)`` is a context manager yielding a ``distributed.Client``; it logs the
dashboard address and closes what it started. Heavy or conflicting back-ends (dask-cuda,
dask-kubernetes) are imported only when asked for, with an install hint when missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

log = logging.getLogger(__name__)

ClusterKind = Literal["local", "address", "cuda", "kubernetes"]

#: Worker processes run one kernel per thread; BLAS/OpenMP/torch pools inside each thread
#: would oversubscribe the cores, so they get one thread each.
SINGLE_THREADED_LIBS = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


#: The CPU image ``deploy/Dockerfile`` builds and ``deploy/k8s`` runs (name:package version);
#: kustomize maps the name to a registry. ``--kubernetes-image`` or $PHYVLM_KUBERNETES_IMAGE
#: set another one.
DEFAULT_KUBERNETES_IMAGE = "phyvlm-cr:0.1.0"
KUBERNETES_IMAGE_ENV = "PHYVLM_KUBERNETES_IMAGE"


def default_kubernetes_image() -> str:
    """$PHYVLM_KUBERNETES_IMAGE when set, else the image the deploy/ manifests run."""
    return os.environ.get(KUBERNETES_IMAGE_ENV) or DEFAULT_KUBERNETES_IMAGE


@dataclass(frozen=True)
class ClusterConfig:
    """kind: "local" (default), "address" (attach to ``address``), "cuda" (dask-cuda, one
    worker per GPU), "kubernetes" (dask-kubernetes operator ``KubeCluster``).
    n_workers / threads_per_worker / memory_limit: for local and cuda clusters.
    """

    kind: ClusterKind = "local"
    address: str | None = None
    n_workers: int | None = None
    threads_per_worker: int | None = None
    memory_limit: str | None = None
    dashboard_address: str = ":8787"
    kubernetes_image: str = field(default_factory=default_kubernetes_image)
    kubernetes_name: str = "phyvlm-cr"
    connect_timeout_s: float = 20.0

    def __post_init__(self) -> None:
        if self.kind not in ("local", "address", "cuda", "kubernetes"):
            raise ValueError(
                f"unknown cluster kind {self.kind!r}: use local, address, cuda or kubernetes"
            )
        if self.kind == "address" and not self.address:
            raise ValueError("cluster kind 'address' needs an address, e.g. tcp://scheduler:8786")
        if not self.kubernetes_image.strip() or any(c.isspace() for c in self.kubernetes_image):
            raise ValueError(
                f"kubernetes_image {self.kubernetes_image!r} is not an image reference: give "
                f"name:tag, e.g. --kubernetes-image {DEFAULT_KUBERNETES_IMAGE}"
            )
        if self.n_workers is not None and self.n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {self.n_workers}")


def _default_workers() -> tuple[int, int]:
    cores = os.cpu_count() or 1
    workers = max(1, min(cores, 4))
    return workers, max(1, cores // workers)


def _missing(extra: str, package: str) -> ImportError:
    return ImportError(
        f"{package} is not installed: install the '{extra}' extra, e.g. pip install 'phyvlm-cr[{extra}]'"
    )


def make_cluster(config: ClusterConfig) -> Any:
    """Start (but do not connect to) a cluster of the configured kind; None for 'address'."""
    if config.kind == "address":
        return None
    if config.kind == "local":
        from distributed import LocalCluster

        workers, threads = _default_workers()
        return LocalCluster(
            n_workers=config.n_workers or workers,
            threads_per_worker=config.threads_per_worker or threads,
            memory_limit=config.memory_limit or "auto",
            processes=True,
            dashboard_address=config.dashboard_address,
            env=dict(SINGLE_THREADED_LIBS),
        )
    if config.kind == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise _missing("gpu", "dask-cuda") from exc
        kwargs: dict[str, Any] = {"dashboard_address": config.dashboard_address}
        if config.n_workers:
            kwargs["n_workers"] = config.n_workers
        if config.threads_per_worker:
            kwargs["threads_per_worker"] = config.threads_per_worker
        if config.memory_limit:
            kwargs["memory_limit"] = config.memory_limit
        # Each worker advertises its GPU so GPU tasks can ask for resources={"GPU": 1}.
        kwargs["resources"] = {"GPU": 1}
        return LocalCUDACluster(**kwargs)
    try:
        from dask_kubernetes.operator import KubeCluster
    except ImportError as exc:
        raise _missing("kubernetes", "dask-kubernetes") from exc
    return KubeCluster(custom_cluster_spec=kubernetes_cluster_spec(config))


def kubernetes_cluster_spec(config: ClusterConfig) -> dict[str, Any]:
    """The ``DaskCluster`` resource the Kubernetes factory submits (scheduler and worker pods
    run ``config.kubernetes_image``); built without a Kubernetes API server."""
    try:
        from dask_kubernetes.operator import make_cluster_spec
    except ImportError as exc:
        raise _missing("kubernetes", "dask-kubernetes") from exc
    return make_cluster_spec(
        name=config.kubernetes_name,
        image=config.kubernetes_image,
        n_workers=config.n_workers or 2,
        env=dict(SINGLE_THREADED_LIBS),
    )


@contextlib.contextmanager
def dask_client(config: ClusterConfig | None = None) -> Iterator[Any]:
    """Connect a ``distributed.Client`` to the configured cluster; close what was started."""
    from distributed import Client

    config = config or ClusterConfig()
    cluster = make_cluster(config)
    try:
        if cluster is None:
            try:
                client = Client(config.address, timeout=f"{config.connect_timeout_s}s")
            except OSError as exc:
                raise ConnectionError(
                    f"cannot reach the Dask scheduler at {config.address}: {exc}. Check the address "
                    "(tcp://host:8786) and that the scheduler is running, or drop --scheduler to "
                    "start a local cluster."
                ) from exc
        else:
            client = Client(cluster)
        try:
            log.info(
                "dask: %d worker(s), %d thread(s); dashboard %s",
                len(client.scheduler_info().get("workers", {})),
                sum(client.nthreads().values()),
                client.dashboard_link,
            )
            yield client
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()

"""The measurements of the speed benchmark: kernel throughput, cluster runs and peers.

``kernel_job`` runs in a fresh process whose BLAS / OpenMP / numba / torch pools are pinned
to one thread (``pinned_process``), so its figure is per core. ``ClusterSession`` starts a
LocalCluster of N single-threaded worker processes (``pipeline.cluster``), samples every
worker's RSS (``_speed_sampler``) and times the real flow (load_cube -> restore ->
write_archive), the odc-stac load alone, and the peers, on the same items and grid.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from ..cluster import SINGLE_THREADED_LIBS

log = logging.getLogger(__name__)

#: SCL classes a tutorial-style masked composite drops: nodata, saturated, cloud shadow,
#: cloud medium / high probability, thin cirrus.
SCL_MASKED_CLASSES = (0, 1, 3, 8, 9, 10)


# --------------------------------------------------------------------------- kernel


@contextlib.contextmanager
def pinned_process() -> Iterator[ProcessPoolExecutor]:
    """A one-process pool whose child starts with every thread pool pinned to one thread.

    The environment variables must be set before the child imports numpy (OpenBLAS reads
    them when it loads), so the child is spawned with them in its environment.
    """
    saved = {k: os.environ.get(k) for k in SINGLE_THREADED_LIBS}
    os.environ.update(SINGLE_THREADED_LIBS)
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            pool.submit(int, 0).result()  # start the child while the variables are set
            yield pool
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def kernel_job(
    items: list, geobox: Any, bands: tuple[str, ...], warmup_px: int, memory_px: int
) -> dict[str, Any]:
    """Time ``pipeline.restore`` on a numpy-backed cube of one chunk (run in a pinned process).

    The cube is read from the benchmark's COGs (odc-stac, synchronous scheduler), so it is
    the data of the end-to-end runs. A ``warmup_px`` crop is restored first (imports, caches;
    not timed). The scene estimation is timed separately too (it is part of ``restore``).
    ``cpu_seconds`` is the process's CPU time over the timed run: with one thread it equals
    the wall time on an idle machine, and stays a per-core figure when other processes share
    the cores (then the wall time is longer). The kernel's heap peak is measured with ``tracemalloc`` (numpy reports its buffers to
    it) on a ``memory_px`` crop, outside the timed run.
    """
    import dask
    import numpy as np

    from ..cube import CubeConfig, load_cube
    from ..restore import estimate_scene, restore

    config = CubeConfig(bands=bands, chunk_size=max(64, *geobox.shape), include_scl=True)
    with dask.config.set(scheduler="synchronous"):
        cube = load_cube(items, config, geobox=geobox).compute()
    nt, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]

    restore(cube.isel(y=slice(0, warmup_px), x=slice(0, warmup_px)))
    started = time.perf_counter()
    estimate_scene(cube)
    scene_seconds = time.perf_counter() - started
    started, cpu_started = time.perf_counter(), time.process_time()
    restored = restore(cube)
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    finite = float(np.isfinite(restored[bands[0]].values).mean())

    crop = cube.isel(y=slice(0, memory_px), x=slice(0, memory_px))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        restore(crop)
        heap_peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return {
        "dates": nt,
        "bands": len(bands),
        "height_px": ny,
        "width_px": nx,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "scene_seconds": scene_seconds,
        "restored_finite_fraction": finite,
        "memory_crop_px": min(memory_px, ny, nx),
        "memory_crop_heap_peak_bytes": int(heap_peak),
        "threads": {k: os.environ.get(k) for k in SINGLE_THREADED_LIBS},
    }


def _best_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """The shortest wall time of ``repeats`` calls (the least disturbed by other processes)
    and the last result."""
    best, result = float("inf"), None
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def harmonisation_job(
    items: list,
    geobox: Any,
    bands: tuple[str, ...],
    warmup_px: int,
    restore_px: int,
    repeats: int,
) -> dict[str, Any]:
    """The local harmonisation alone, per backend, on one pair of dates (a pinned process).

    Times what ``fuse_dates`` calls per target date and candidate (``_fusion.
    _harmonise_candidate``: the robust pre-weight and the local fit, float32 maps back in
    host memory) with the numba backend, the torch backend on the CPU (1 thread) and, where
    torch sees CUDA, on the GPU, on the same inputs: the benchmark cube's first two dates
    (observed reflectance, NaN where unobserved) with a clear weight of 1 where both are
    finite. The default grid (``FusionConfig().grid_step``) and the exact fit (grid step 1),
    best of ``repeats`` after a warm-up on a ``warmup_px`` crop. Also ``restore`` on a
    ``restore_px`` crop with each CPU backend, once each after a warm-up.
    """
    import dask
    import numpy as np

    from ..cube import CubeConfig, load_cube
    from ..kernels import FusionConfig
    from ..kernels._fusion import _harmonise_candidate
    from ..restore import restore

    config = CubeConfig(bands=bands, chunk_size=max(64, *geobox.shape), include_scl=False)
    with dask.config.set(scheduler="synchronous"):
        cube = load_cube(items, config, geobox=geobox).compute()
    data = np.stack([cube[b].values for b in bands], axis=1).astype(np.float32)  # (T, B, Y, X)
    target, source = data[0], data[1]
    ny, nx = target.shape[1:]
    clear = (np.isfinite(target).all(0) & np.isfinite(source).all(0)).astype(np.float64)
    prior = (np.ones(len(bands)), np.zeros(len(bands)))

    backends: list[tuple[str, str | None]] = [("numba", None)]
    devices: dict[str, str] = {}
    torch: Any = None
    with contextlib.suppress(ImportError):
        import torch as _torch

        torch = _torch
    if torch is not None:
        torch.set_num_threads(1)
        backends.append(("torch", "cpu"))
        if torch.cuda.is_available():
            backends.append(("torch", "cuda"))
            devices["cuda"] = torch.cuda.get_device_name(0)

    def fit(cfg: FusionConfig, crop: int | None = None) -> tuple[np.ndarray, ...]:
        box = (slice(None), slice(0, crop), slice(0, crop))
        return _harmonise_candidate(target[box], source[box], clear[box[1:]], *prior, cfg, (0, 0))

    default_step = FusionConfig().grid_step
    runs = []
    reference: dict[int, np.ndarray] = {}
    for step in (default_step, 1):
        for backend, device in backends:
            cfg = FusionConfig(backend=backend, device=device, harmonise_grid_step=step)
            fit(cfg, warmup_px)
            seconds, (gain, _, _) = _best_seconds(partial(fit, cfg), repeats)
            if backend == "numba":
                reference[step] = gain
            runs.append(
                {
                    "backend": backend,
                    "device": device or "cpu",
                    "device_name": devices.get(device or "", "cpu"),
                    "grid_step": step,
                    "seconds": seconds,
                    "output_mpx_per_s": ny * nx / 1e6 / seconds,
                    "max_abs_gain_difference_to_numba": float(
                        np.nanmax(np.abs(gain.astype(np.float64) - reference[step]))
                    ),
                }
            )
            log.info(
                "harmonisation %s on %s, grid step %d: %.3f s (%.2f Mpx/s)",
                backend,
                device or "cpu",
                step,
                seconds,
                ny * nx / 1e6 / seconds,
            )

    restore_runs = []
    crop = cube.isel(y=slice(0, restore_px), x=slice(0, restore_px))
    for backend, device in backends:
        if device == "cuda":
            continue  # restore's other kernels are CPU-only: the GPU figure is the fit's above
        options = {"backend": backend, "device": device}
        restore(crop.isel(y=slice(0, warmup_px), x=slice(0, warmup_px)), fusion=options)
        started = time.perf_counter()
        restore(crop, fusion=options)
        seconds = time.perf_counter() - started
        restore_runs.append({"backend": backend, "device": device or "cpu", "seconds": seconds})
    return {
        "dates": int(cube.sizes["time"]),
        "bands": len(bands),
        "height_px": ny,
        "width_px": nx,
        "harmonise_radius": FusionConfig().harmonise_radius,
        "repeats": repeats,
        "torch_version": None if torch is None else torch.__version__,
        "cuda_available": bool(devices),
        "runs": runs,
        "restore_px": min(restore_px, ny, nx),
        "restore": restore_runs,
        "threads": {k: os.environ.get(k) for k in SINGLE_THREADED_LIBS},
    }


# --------------------------------------------------------------------------- cluster


def _warm_imports() -> list[str]:
    """Import what the measured tasks need, once per worker, before any timing."""
    import importlib

    names = [
        "pipeline.restore",
        "pipeline.cube",
        "pipeline.archive",
        "odc.stac",
        "zarr",
        "rasterio",
    ]
    for name in names:
        importlib.import_module(name)
    for optional in ("odc.algo", "geomad"):  # the geomedian peer; its absence is reported there
        with contextlib.suppress(ImportError):
            importlib.import_module(optional)
            names.append(optional)
    return names


class ClusterSession:
    """A LocalCluster of ``workers`` x ``threads`` with RSS samplers; times the flows on it."""

    def __init__(
        self,
        items: list,
        bands: tuple[str, ...],
        chunk_size: int,
        workers: int,
        threads_per_worker: int,
        workdir: Path,
    ) -> None:
        self.items = items
        self.bands = bands
        self.chunk_size = chunk_size
        self.workers = workers
        self.threads = threads_per_worker
        self.workdir = workdir
        self._stack = contextlib.ExitStack()
        self.client: Any = None
        self.memory: Any = None
        self.idle_rss: dict[str, int] = {}

    def __enter__(self) -> ClusterSession:
        from .._reading import configure_gdal
        from ..cluster import ClusterConfig, dask_client
        from ._speed_sampler import WorkerMemory

        config = ClusterConfig(
            n_workers=self.workers,
            threads_per_worker=self.threads,
            dashboard_address="127.0.0.1:0",
        )
        self.client = self._stack.enter_context(dask_client(config))
        configure_gdal(self.client)
        self.client.run(_warm_imports)
        self.memory = WorkerMemory(self.client)
        self.idle_rss = dict(self.memory.idle)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # ------------------------------------------------------------------ helpers

    def _config(self):
        from ..cube import CubeConfig

        return CubeConfig(bands=self.bands, chunk_size=self.chunk_size, include_scl=True)

    def _cube(self, geobox: Any):
        from ..cube import load_cube

        return load_cube(self.items, self._config(), geobox=geobox)

    def _measure(self, what: str, fn: Callable[[], None]) -> dict[str, Any]:
        """Run ``fn`` once; its wall time and each worker's peak RSS meanwhile."""
        self.memory.reset()
        started = time.perf_counter()
        fn()
        seconds = time.perf_counter() - started
        rss = self.memory.read()
        peaks = [v["peak"] for v in rss.values()]
        log.info(
            "%s: %.1f s on %d worker(s), peak worker RSS %.0f MiB",
            what,
            seconds,
            self.workers,
            max(peaks) / 2**20,
        )
        return {
            "seconds": seconds,
            "peak_worker_rss_bytes": max(peaks),
            "worker_rss_at_start_bytes": max(v["baseline"] for v in rss.values()),
        }

    def _store(self, name: str) -> str:
        return str(self.workdir / f"{name}-w{self.workers}.zarr")

    # ------------------------------------------------------------------ measurements

    def load_only(self, geobox: Any) -> dict[str, Any]:
        """The I/O floor: odc-stac reads, decodes, reprojects and scales the cube into memory."""
        from distributed import futures_of, wait

        def job() -> None:
            persisted = self._cube(geobox).persist()
            wait(futures_of(persisted))
            del persisted

        return self._measure("odc-stac load only", job)

    def end_to_end(self, geobox: Any, name: str) -> dict[str, Any]:
        """The real flow: lazy cube -> restore (scene sample from the overviews + map_overlap)
        -> Zarr regions."""
        from ..archive import ArchiveConfig, write_archive
        from ..cube import load_scene_sample
        from ..restore import restore

        def job() -> None:
            sample = load_scene_sample(self.items, self._config(), geobox)
            restored = restore(self._cube(geobox), scene_sample=sample)
            archive = ArchiveConfig(chunk_size=self.chunk_size, mode="overwrite")
            write_archive(restored, self._store(name), archive, progress=False, client=self.client)

        return self._measure("end to end (COGs -> restore -> Zarr)", job)

    def _masked(self, geobox: Any):
        cube = self._cube(geobox)
        cloudy = cube["SCL"].isin(list(SCL_MASKED_CLASSES))
        return cube[list(self.bands)].where(~cloudy)

    def masked_median(self, geobox: Any) -> dict[str, Any]:
        """Peer 1, what tutorials do: drop SCL cloud/shadow classes, median over time, Zarr."""

        def job() -> None:
            median = self._masked(geobox).chunk({"time": -1}).median("time")
            median.to_zarr(self._store("median"), mode="w", consolidated=False)

        return self._measure("peer: SCL-masked median", job)

    def geomedian(self, geobox: Any) -> dict[str, Any]:
        """Peer 2, Digital Earth Australia / Africa: odc-algo geomedian of the masked cube."""
        try:
            from odc.algo import xr_geomedian
        except ImportError as exc:
            raise ImportError(
                "the geomedian peer needs odc-algo and geomad: pip install odc-algo geomad, "
                "or leave 'peers' out of the benchmark's parts"
            ) from exc

        def job() -> None:
            result = xr_geomedian(self._masked(geobox))
            result.to_zarr(self._store("geomedian"), mode="w", consolidated=False)

        return self._measure("peer: odc-algo geomedian", job)

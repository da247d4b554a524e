"""Speed and memory benchmark of the restoration against the I/O floor and the peers (issue 6).

One run, one machine, one generated stack (``pipeline.synthetic``: COGs + Planetary-Computer-
like STAC items in a work folder), five measurements:

1. ``kernel``: ``pipeline.restore`` on a numpy-backed cube of one ``kernel_size`` chunk, in
   a process whose BLAS / OpenMP / numba / torch pools are pinned to one thread, after an
   untimed warm-up on a crop: output megapixels (dates x pixels) per second per core and
   input values (dates x bands x pixels) per second. Also the kernel's heap peak
   (tracemalloc, on a crop) against ``pipeline.bench.memory``.
2. ``end_to_end``: local COGs -> Zarr through the real flow (``load_cube`` -> ``restore`` ->
   ``write_archive``) on a LocalCluster, against odc-stac loading the same cube into worker
   memory alone (the I/O floor), as a ratio.
3. ``peers``: on the same cube and cluster, a SCL-masked median over time in xarray/dask (what
   tutorials do) and odc-algo's ``xr_geomedian`` (what Digital Earth Australia / Africa run),
   each written to Zarr, as ratios of the end-to-end time.
4. ``memory``: each worker's peak RSS (``_speed_sampler``: a psutil thread in every worker)
   during the end-to-end run, against ``estimate_memory``, at two areas (1x and 4x pixels)
   to show whether it stays flat.
5. ``scaling``: the end-to-end time with 1 and with N single-threaded worker processes.
6. ``harmonisation``: the fusion's dominant cost alone, the local harmonisation of one
   candidate date (pre-weight + local fit, ``FusionConfig.backend``), on one
   ``kernel_size`` chunk in the pinned process: numba, torch on the CPU (1 thread) and, where
   torch sees CUDA, torch on the GPU (its name recorded), at the default grid step and the
   exact fit; output megapixels per second and torch-CPU speed / numba speed. Also
   ``restore`` on a small crop with each CPU backend. Seconds, not minutes.

Timings are wall seconds of one run each (no repeats: the whole point is one comparable run).
The COGs are in the page cache when they are read (they were just written), so the "I/O"
floor is decode + reprojection + scaling, not disk; say so when quoting it.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .memory import effective_halo, estimate_memory

__all__ = ["PARTS", "SpeedConfig", "SpeedReport", "check_memory", "run_speed_benchmark"]

log = logging.getLogger(__name__)

#: What a run can measure; ``SpeedConfig.parts`` picks a subset.
PARTS = ("kernel", "end_to_end", "peers", "memory", "scaling", "harmonisation")
#: Parts that run in the one pinned process, without a cluster.
IN_PROCESS_PARTS = frozenset({"kernel", "harmonisation"})
#: Bands in the order a B-band benchmark takes them: the HOT pair (B02, B04) and the snow test
#: (B03, B08, B11) come first so a small B still exercises every cue of the physics prior.
BAND_ORDER = ("B02", "B03", "B04", "B08", "B11", "B12", "B05", "B06", "B07", "B8A", "B01", "B09")
#: The issue's targets, printed beside the figures.
TARGETS = {
    "kernel_output_mpx_per_s_per_core": 5.0,
    "end_to_end_over_load": 1.3,
    "memory_ratio_band": 0.2,
    "speedup": 1.6,
    # issue 14: a torch implementation within 0.8x of numba's speed on the CPU may replace it
    "harmonisation_torch_cpu_over_numba": 0.8,
}
_WARMUP_PX = 128
_MEMORY_PX = 256
_HARMONISATION_RESTORE_PX = 256
_HARMONISATION_REPEATS = 3


@dataclass(frozen=True)
class SpeedConfig:
    """Sizes and parts of a speed run.

    dates, bands: T and B of the generated stack (bands taken in ``BAND_ORDER``).
    kernel_size: side (px) of the one chunk the kernel throughput is timed on.
    size: side (px) of the end-to-end area; the memory part also runs ``size // 2``.
    chunk_size: spatial chunk (px) of the cube and the archive in the cluster runs.
    workers: worker-process counts to run (each single-threaded unless threads_per_worker).
    seed: of the synthetic stack.
    parts: any of ``PARTS``.
    keep_data: keep the COGs, items and Zarr stores in the output folder.
    """

    dates: int = 12
    bands: int = 10
    kernel_size: int = 1024
    size: int = 1024
    chunk_size: int = 512
    workers: tuple[int, ...] = (1, 2)
    threads_per_worker: int = 1
    seed: int = 0
    parts: tuple[str, ...] = PARTS
    keep_data: bool = False

    def __post_init__(self) -> None:
        if not 2 <= self.dates <= 100:
            raise ValueError(
                f"dates {self.dates} out of range: use 2..100 (the kernels need a series)"
            )
        if not 1 <= self.bands <= len(BAND_ORDER):
            raise ValueError(f"bands {self.bands} out of range: use 1..{len(BAND_ORDER)}")
        for name in ("kernel_size", "size", "chunk_size"):
            if getattr(self, name) < 64:
                raise ValueError(f"{name} {getattr(self, name)} is too small: use at least 64 px")
        unknown = sorted(set(self.parts) - set(PARTS))
        if unknown or not self.parts:
            raise ValueError(
                f"unknown or no parts {unknown or '()'}: choose from {', '.join(PARTS)}"
            )
        if not self.workers or min(self.workers) < 1:
            raise ValueError(f"workers {self.workers}: give worker counts >= 1, e.g. 1,2")
        if "scaling" in self.parts and len(set(self.workers)) < 2:
            raise ValueError("the scaling part needs two worker counts, e.g. workers=(1, 2)")
        if self.threads_per_worker < 1:
            raise ValueError("threads_per_worker must be at least 1")

    @property
    def band_names(self) -> tuple[str, ...]:
        return BAND_ORDER[: self.bands]

    @property
    def cluster_parts(self) -> bool:
        return bool(set(self.parts) - IN_PROCESS_PARTS)


@dataclass
class SpeedReport:
    """Figures of one run; ``table()`` for people, ``as_dict()`` / speed.json for comparisons."""

    config: SpeedConfig
    machine: dict[str, Any]
    figures: dict[str, Any]
    json_path: Path | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        cfg = asdict(self.config)
        cfg["band_names"] = list(self.config.band_names)
        return {
            "config": cfg,
            "machine": self.machine,
            "targets": TARGETS,
            **self.figures,
            "notes": self.notes,
        }

    def table(self) -> str:
        return _format_table(self)


# --------------------------------------------------------------------------- the run


def _halo() -> int:
    from ..priors import get_prior
    from ..restore import FusionConfig

    return int(get_prior("physics").halo + FusionConfig().halo)


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def _kernel_part(config: SpeedConfig, items: list, geobox: Any) -> dict[str, Any]:
    from ._speed_runs import kernel_job, pinned_process

    k = config.kernel_size
    with pinned_process() as pool:
        raw = pool.submit(
            kernel_job, items, geobox[:k, :k], config.band_names, _WARMUP_PX, _MEMORY_PX
        ).result()
    pixels = raw["height_px"] * raw["width_px"]
    crop = raw["memory_crop_px"]
    predicted = estimate_memory(crop, raw["dates"], raw["bands"], halo=0).task_bytes
    log.info(
        "kernel: %.1f s wall, %.1f s CPU for %d dates x %d x %d px",
        raw["seconds"],
        raw["cpu_seconds"],
        raw["dates"],
        raw["height_px"],
        raw["width_px"],
    )
    return {
        **raw,
        "output_megapixels": raw["dates"] * pixels / 1e6,
        "output_mpx_per_s_per_core": raw["dates"] * pixels / 1e6 / raw["seconds"],
        "output_mpx_per_cpu_s": raw["dates"] * pixels / 1e6 / raw["cpu_seconds"],
        "cpu_share": raw["cpu_seconds"] / raw["seconds"],
        "input_values_per_s": raw["dates"] * raw["bands"] * pixels / raw["seconds"],
        "scene_share": raw["scene_seconds"] / raw["seconds"],
        "memory_crop_predicted_bytes": predicted,
        "memory_crop_ratio": _ratio(raw["memory_crop_heap_peak_bytes"], predicted),
    }


def _harmonisation_part(config: SpeedConfig, items: list, geobox: Any) -> dict[str, Any]:
    from ._speed_runs import harmonisation_job, pinned_process

    k = config.kernel_size
    with pinned_process() as pool:
        raw = pool.submit(
            harmonisation_job,
            items,
            geobox[:k, :k],
            config.band_names,
            _WARMUP_PX,
            _HARMONISATION_RESTORE_PX,
            _HARMONISATION_REPEATS,
        ).result()
    by = {(r["backend"], r["device"], r["grid_step"]): r["seconds"] for r in raw["runs"]}
    ratios = {
        str(step): _ratio(by[("numba", "cpu", step)], by[("torch", "cpu", step)])
        for (backend, device, step) in by
        if backend == "torch" and device == "cpu"
    }
    rest = {r["backend"]: r["seconds"] for r in raw["restore"]}
    return {
        **raw,
        # speed of torch on one CPU thread over numba's (1 = as fast), per grid step
        "torch_cpu_over_numba_by_grid_step": ratios,
        "restore_torch_cpu_over_numba": (
            _ratio(rest["numba"], rest["torch"]) if "torch" in rest else math.nan
        ),
    }


def _cluster_part(
    config: SpeedConfig, items: list, geobox: Any, workdir: Path
) -> list[dict[str, Any]]:
    """One session per worker count; returns one row per (workers, area) run."""
    from ._speed_runs import ClusterSession

    big = config.size
    small = config.size // 2
    top = max(config.workers)
    counts = sorted(set(config.workers)) if "scaling" in config.parts else [top]
    rows = []
    for workers in counts:
        areas = [small, big] if ("memory" in config.parts and workers == top) else [big]
        with ClusterSession(
            items, config.band_names, config.chunk_size, workers, config.threads_per_worker, workdir
        ) as session:
            idle = sorted(session.idle_rss.values())
            for area in areas:
                gb = geobox[:area, :area]
                row: dict[str, Any] = {
                    "workers": workers,
                    "threads_per_worker": config.threads_per_worker,
                    "area_px": area,
                    "chunk_px": min(config.chunk_size, area),
                    "worker_idle_rss_bytes": idle[len(idle) // 2],
                    "load": session.load_only(gb),
                    "end_to_end": session.end_to_end(gb, f"restored-{area}"),
                }
                if "peers" in config.parts and workers == top and area == big:
                    row["masked_median"] = session.masked_median(gb)
                    row["geomedian"] = session.geomedian(gb)
                rows.append(row)
    return rows


def _figures(config: SpeedConfig, rows: list[dict[str, Any]], dates: int) -> dict[str, Any]:
    halo = _halo()
    top = max(config.workers)
    out: dict[str, Any] = {"halo_px": halo}
    main = next(r for r in rows if r["workers"] == top and r["area_px"] == config.size)
    e2e = main["end_to_end"]["seconds"]
    out["end_to_end"] = [
        {
            "workers": r["workers"],
            "threads_per_worker": r["threads_per_worker"],
            "area_px": r["area_px"],
            "chunk_px": r["chunk_px"],
            "load_seconds": r["load"]["seconds"],
            "end_to_end_seconds": r["end_to_end"]["seconds"],
            "end_to_end_over_load": _ratio(r["end_to_end"]["seconds"], r["load"]["seconds"]),
            "output_mpx_per_s": dates * r["area_px"] ** 2 / 1e6 / r["end_to_end"]["seconds"],
        }
        for r in rows
    ]
    if "peers" in config.parts:
        out["peers"] = {
            "workers": top,
            "area_px": config.size,
            "end_to_end_seconds": e2e,
            "masked_median_seconds": main["masked_median"]["seconds"],
            "geomedian_seconds": main["geomedian"]["seconds"],
            "end_to_end_over_masked_median": _ratio(e2e, main["masked_median"]["seconds"]),
            "end_to_end_over_geomedian": _ratio(e2e, main["geomedian"]["seconds"]),
            "masked_median_peak_worker_rss_bytes": main["masked_median"]["peak_worker_rss_bytes"],
            "geomedian_peak_worker_rss_bytes": main["geomedian"]["peak_worker_rss_bytes"],
        }
    if "memory" in config.parts:
        mem_rows = []
        for r in rows:
            if r["workers"] != top:
                continue
            est = estimate_memory(
                r["chunk_px"],
                dates,
                config.bands,
                halo=effective_halo(r["area_px"], r["chunk_px"], halo),
                threads_per_worker=r["threads_per_worker"],
                worker_baseline_bytes=r["worker_idle_rss_bytes"],
            )
            measured = r["end_to_end"]["peak_worker_rss_bytes"]
            mem_rows.append(
                {
                    "workers": top,
                    "area_px": r["area_px"],
                    "chunk_px": r["chunk_px"],
                    "measured_peak_worker_rss_bytes": measured,
                    "worker_idle_rss_bytes": r["worker_idle_rss_bytes"],
                    "predicted_worker_bytes": est.worker_bytes,
                    "predicted_task_bytes": est.task_bytes,
                    "measured_over_predicted": _ratio(measured, est.worker_bytes),
                    "measured_over_predicted_above_idle": _ratio(
                        measured - r["worker_idle_rss_bytes"],
                        est.worker_bytes - est.worker_baseline_bytes,
                    ),
                }
            )
        out["memory"] = mem_rows
    if "scaling" in config.parts:
        by_workers = {
            r["workers"]: r["end_to_end"]["seconds"] for r in rows if r["area_px"] == config.size
        }
        lo, hi = min(by_workers), max(by_workers)
        out["scaling"] = {
            "area_px": config.size,
            "end_to_end_seconds_by_workers": {str(k): v for k, v in sorted(by_workers.items())},
            "from_workers": lo,
            "to_workers": hi,
            "speedup": _ratio(by_workers[lo], by_workers[hi]),
        }
    return out


def check_memory(config: SpeedConfig, available_bytes: int) -> None:
    """Refuse a run the memory calculator says cannot fit, naming the flag that fixes it.

    The in-memory kernel holds the whole chunk and its temporaries in one process; the
    cluster runs hold ``workers`` x the per-worker figure.
    """
    gib = 2**30
    if "kernel" in config.parts:
        need = estimate_memory(config.kernel_size, config.dates, config.bands, halo=0).task_bytes
        if need > 0.8 * available_bytes:
            fit = config.kernel_size
            while fit > 64 and estimate_memory(
                fit, config.dates, config.bands, halo=0
            ).task_bytes > (0.8 * available_bytes):
                fit //= 2
            raise ValueError(
                f"the kernel part on a {config.kernel_size} px chunk (T={config.dates}, "
                f"B={config.bands}) needs about {need / gib:.1f} GiB (pipeline.bench.memory), "
                f"this machine has {available_bytes / gib:.1f} GiB available; use "
                f"--kernel-size {fit} or fewer --dates/--bands"
            )
    if config.cluster_parts:
        chunk = min(config.chunk_size, config.size)
        per_worker = estimate_memory(
            chunk,
            config.dates,
            config.bands,
            halo=_halo(),
            threads_per_worker=config.threads_per_worker,
        ).worker_bytes
        need = max(config.workers) * per_worker
        if need > 0.8 * available_bytes:
            raise ValueError(
                f"{max(config.workers)} worker(s) with {chunk} px chunks (T={config.dates}, "
                f"B={config.bands}) need about {need / gib:.1f} GiB, this machine has "
                f"{available_bytes / gib:.1f} GiB available; use a smaller --chunk-size or fewer "
                "--workers"
            )


def run_speed_benchmark(
    config: SpeedConfig | None = None,
    output_dir: str | Path = "benchmark-speed",
    progress: bool = True,
) -> SpeedReport:
    """Run the configured parts on one generated stack; write ``speed.json`` into ``output_dir``."""
    import odc.geo.xr  # noqa: F401  (the .odc accessor)
    import psutil

    from ..synthetic import make_stack, write_stac_items
    from ._speed_machine import machine_info, source_digest

    config = config or SpeedConfig()
    check_memory(config, psutil.virtual_memory().available)
    say = log.info if progress else log.debug
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="speed-work-", dir=out))
    digest_at_start = source_digest()
    load_at_start = psutil.getloadavg()  # other processes' CPU use shows in the figures
    figures: dict[str, Any] = {}
    try:
        side = max(
            config.kernel_size if set(config.parts) & IN_PROCESS_PARTS else 0,
            config.size if config.cluster_parts else 0,
        )
        say(
            "generating a %d-date x %d-band x %d x %d px synthetic stack (seed %d)",
            config.dates,
            config.bands,
            side,
            side,
            config.seed,
        )
        stack = make_stack((config.dates, side, side), bands=config.band_names, seed=config.seed)
        say("writing COGs and STAC items to %s", workdir)
        items = write_stac_items(stack, workdir / "stac")
        geobox = stack.truth.odc.geobox
        del stack
        if "kernel" in config.parts:
            say(
                "kernel throughput: restore on one %d px chunk in memory, 1 thread (%s)",
                config.kernel_size,
                "after a warm-up crop",
            )
            figures["kernel"] = _kernel_part(config, items, geobox)
        if "harmonisation" in config.parts:
            say(
                "harmonisation alone: one candidate's fit on one %d px chunk per backend, 1 thread",
                config.kernel_size,
            )
            figures["harmonisation"] = _harmonisation_part(config, items, geobox)
        if config.cluster_parts:
            say(
                "cluster runs: %s worker(s), area %d px, chunks %d px",
                sorted(set(config.workers)),
                config.size,
                config.chunk_size,
            )
            rows = _cluster_part(config, items, geobox, workdir)
            figures["runs"] = rows
            figures.update(_figures(config, rows, config.dates))
    finally:
        if config.keep_data:
            say("kept the COGs, items and stores in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    machine = machine_info()
    machine["load_average_at_start"] = list(load_at_start)
    machine["load_average_at_end"] = list(psutil.getloadavg())
    report = SpeedReport(config=config, machine=machine, figures=figures)
    report.notes = _notes(config)
    if report.machine["pipeline_source_digest"] != digest_at_start:
        warning = (
            "the pipeline's source files changed during the run (someone edited them): the "
            "figures may mix code versions; rerun on a quiet tree"
        )
        log.warning(warning)
        report.notes.insert(0, "WARNING: " + warning)
    report.json_path = out / "speed.json"
    report.json_path.write_text(json.dumps(report.as_dict(), indent=2, default=_json_default))
    return report


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _notes(config: SpeedConfig) -> list[str]:
    return [
        "kernel: pipeline.restore on a numpy cube (scene estimation + prior + fusion), one "
        "thread, warm-up excluded; output megapixels = dates x pixels.",
        "load: odc-stac read + decode + reprojection + scaling into worker memory (persist); "
        "the COGs were just written, so they come from the page cache.",
        "end to end: load_scene_sample (the COGs' overviews) + load_cube -> restore -> "
        "write_archive (Zarr v3), as the flows run it: the cube is read once.",
        "peers write one composite per pixel; the pipeline writes every date plus 5 quality "
        "layers.",
        "memory: the highest RSS of any worker process (psutil thread, 10 ms) during the "
        "end-to-end run, against pipeline.bench.memory.estimate_memory with the measured "
        "idle worker RSS as baseline.",
        "harmonisation: fuse_dates' fit of one candidate (robust pre-weight + local gain/offset, "
        "float32 maps back in host memory) on the cube's first two dates, best of "
        f"{_HARMONISATION_REPEATS}; output megapixels = pixels of one map. torch/numba is the "
        "speed ratio on one CPU thread (issue 14: >= 0.8 would let torch replace numba).",
    ]


# --------------------------------------------------------------------------- table


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def _format_table(report: SpeedReport) -> str:
    c, f, m = report.config, report.figures, report.machine
    lines = [
        f"Speed benchmark: T = {c.dates} dates, B = {c.bands} bands ({','.join(c.band_names)})",
        f"machine: {m['cpu_model']}, {m['logical_cores']} cores, {_mib(m['ram_bytes'])} RAM; "
        f"commit {m.get('git_commit') or 'unknown'}, source {m['pipeline_source_digest']}; "
        f"{m['timestamp']}",
    ]
    if "load_average_at_start" in m:
        lines.append(
            f"load average (1 min) at start {m['load_average_at_start'][0]:.1f}, at end "
            f"{m['load_average_at_end'][0]:.1f}: above 0 means other processes shared the cores"
        )
    lines += [n for n in report.notes if n.startswith("WARNING")]
    if "kernel" in f:
        k = f["kernel"]
        t = TARGETS["kernel_output_mpx_per_s_per_core"]
        lines += [
            "",
            f"Restoration kernel, in memory, 1 thread, one {k['height_px']} x {k['width_px']} px chunk",
            f"  output megapixels / s / core    {k['output_mpx_per_s_per_core']:10.3f}   (target >= {t})",
            f"  per CPU-second (CPU share)      {k['output_mpx_per_cpu_s']:10.3f}   "
            f"({k['cpu_share']:.0%} of the wall time on the CPU)",
            f"  input values / s                {k['input_values_per_s']:10.3e}",
            f"  seconds (scene estimation)      {k['seconds']:10.1f}   ({k['scene_seconds']:.1f} s)",
            f"  heap peak on {k['memory_crop_px']} px crop       "
            f"{_mib(k['memory_crop_heap_peak_bytes']):>10}   predicted "
            f"{_mib(k['memory_crop_predicted_bytes'])}, ratio {k['memory_crop_ratio']:.2f}",
        ]
    if "harmonisation" in f:
        lines += _harmonisation_lines(f["harmonisation"])
    if "end_to_end" in f:
        lines += [
            "",
            "End to end, local COGs -> Zarr, vs odc-stac load only (the I/O floor)",
            "  workers  area px  chunk px   load s   e2e s   e2e/load  e2e Mpx/s",
        ]
        for r in f["end_to_end"]:
            lines.append(
                f"  {r['workers']:>7}  {r['area_px']:>7}  {r['chunk_px']:>8}  {r['load_seconds']:7.1f}"
                f"  {r['end_to_end_seconds']:6.1f}   {r['end_to_end_over_load']:8.2f}"
                f"  {r['output_mpx_per_s']:9.3f}"
            )
        lines.append(f"  target: e2e/load <= {TARGETS['end_to_end_over_load']}")
    if "peers" in f:
        p = f["peers"]
        lines += [
            "",
            f"Peers on the same cube ({p['workers']} workers, {p['area_px']} px), each to Zarr",
            f"  SCL-masked median (xarray)      {p['masked_median_seconds']:8.1f} s   "
            f"pipeline/peer {p['end_to_end_over_masked_median']:.2f}",
            f"  geomedian (odc-algo)            {p['geomedian_seconds']:8.1f} s   "
            f"pipeline/peer {p['end_to_end_over_geomedian']:.2f}",
            "  target: pipeline/peer < 1 for both",
        ]
    if "memory" in f:
        band = TARGETS["memory_ratio_band"]
        lines += [
            "",
            "Peak memory per worker during end to end vs pipeline.bench.memory",
            "  area px  chunk px    measured   predicted   ratio   ratio above idle",
        ]
        for r in f["memory"]:
            lines.append(
                f"  {r['area_px']:>7}  {r['chunk_px']:>8}  {_mib(r['measured_peak_worker_rss_bytes']):>10}"
                f"  {_mib(r['predicted_worker_bytes']):>10}   {r['measured_over_predicted']:5.2f}"
                f"   {r['measured_over_predicted_above_idle']:5.2f}"
            )
        lines.append(f"  target: ratio within 1 +- {band}, flat as the area grows")
    if "scaling" in f:
        s = f["scaling"]
        times = ", ".join(
            f"{w} worker(s) {v:.1f} s" for w, v in s["end_to_end_seconds_by_workers"].items()
        )
        lines += [
            "",
            f"Scaling, end to end at {s['area_px']} px: {times}",
            f"  speed-up {s['from_workers']} -> {s['to_workers']} workers   {s['speedup']:.2f}"
            f"   (target >= {TARGETS['speedup']})",
        ]
    if report.json_path is not None:
        lines += ["", f"figures: {report.json_path}"]
    return "\n".join(lines)


def _harmonisation_lines(h: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"Local harmonisation alone, one candidate, {h['height_px']} x {h['width_px']} px, "
        f"B = {h['bands']}, radius {h['harmonise_radius']} (best of {h['repeats']})",
        "  backend  device  grid step   seconds   output Mpx/s   max |gain - numba|",
    ]
    for r in h["runs"]:
        device = r["device"] if r["device"] == "cpu" else f"{r['device']} ({r['device_name']})"
        lines.append(
            f"  {r['backend']:<7}  {device:<6}  {r['grid_step']:>9}  {r['seconds']:8.3f}"
            f"   {r['output_mpx_per_s']:12.2f}   {r['max_abs_gain_difference_to_numba']:.1e}"
        )
    target = TARGETS["harmonisation_torch_cpu_over_numba"]
    for step, ratio in h["torch_cpu_over_numba_by_grid_step"].items():
        lines.append(
            f"  torch-CPU / numba speed, grid step {step}: {ratio:.2f}   (keep one if >= {target})"
        )
    if not h["torch_version"]:
        lines.append("  torch is not installed: numba only (pip install 'phyvlm-cr[vlm]')")
    elif not h["cuda_available"]:
        lines.append("  torch sees no CUDA device here: no GPU figure")
    rest = {r["backend"]: r["seconds"] for r in h["restore"]}
    if "torch" in rest:
        lines.append(
            f"  restore on a {h['restore_px']} px crop, CPU: numba {rest['numba']:.1f} s, torch "
            f"{rest['torch']:.1f} s (torch/numba speed {h['restore_torch_cpu_over_numba']:.2f})"
        )
    return lines

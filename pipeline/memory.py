"""Memory calculator for the restoration: bytes per task and per Dask worker (STYLE habit 6).

Part of the library (the flows size chunks and time blocks with it, ``plan_time_block``);
``pipeline.bench.memory`` re-exports it for the benchmarks.

``estimate_memory`` predicts, from the chunk size, the number of dates T and bands B, the
halo and the threads per worker, the peak memory of one ``restore`` task and of one worker
process. The speed benchmark (``pipeline.bench.speed``) measures both and reports
measured / predicted, so the model is checked on every run.

Units: P = T x (chunk + 2 halo)^2 x 4 bytes, one float32 per-pixel layer of a task's block
(the block includes the halo because ``map_overlap`` hands the kernel the padded block), and
L = (chunk + 2 halo)^2 x 8 bytes = 2 P / T, one float64 layer of a single date.

Kernel temporaries (counted by reading ``pipeline.restore._restore_block``,
``pipeline.priors._physics`` and ``pipeline.kernels``, and checked against the tracemalloc
snapshot at the heap peak). The compiled (numba) passes of ``pipeline.kernels`` leave no
whole-stack temporaries: J_phys stays float32, the prior's layers are made in one pass each,
and one target date of ``fuse_dates`` holds a handful of single-date arrays. The peak is in
the per-date loop, inside ``_temporal_refinement`` (``_prior_factor``, before the loop, is
within 1 % of it). Live there:

Held for the whole block (x P):

================================================  =============  ==============================
array                                             size (x P)     where
================================================  =============  ==============================
input block (bands + SCL as float32)              B + 1          ``restore._stack`` / overlap
contiguous copy of the bands                      B              ``_restore_block``
output block (bands + 7 quality layers)           B + 7          ``_restore_block`` (np.empty)
t_b (band transmission) and J_phys (float32)      2 B            ``PhysicsPrior.block``
t_ref, confidence (float32)                       2              ``PhysicsPrior.block``
cloud evidence p_cloud, p_shadow (float32)        2              ``CombinedPrior.block_at``
fused bands (float32)                             B              ``fuse_dates`` (out)
5 float32 quality layers + uint8 flag             5.25           ``fuse_dates``
q, consistency, base score, clear, prior factor   10             ``fuse_dates`` (float64 each)
p_clear, pass-through weight, shadow evidence     6              ``fuse_dates`` (float64 each)
valid, eligible (bool)                            0.5            ``fuse_dates``
================================================  =============  ==============================

Total 6 B + 31.75 with SCL (``KERNEL_LAYERS_PER_BAND``, ``KERNEL_LAYERS_FIXED``), one P less
without.

Working set of one target date (x L; C = candidates = min(max_candidates, T - 1)):

================================================  =============  ==============================
array                                             size (x L)     where
================================================  =============  ==============================
haze readings H_b                                 B              ``haze_readings``
reference (its accumulator, normalised in place)  B              ``fuse_dates`` step 3
refined J_phys of the date (float64)              B              ``_temporal_refinement``
blend weights of the candidates                   C              ``fuse_dates`` step 2
per-pixel layers (reference quality, variance,    10             ``fuse_dates``, refinement
weights, trust, snow, t_ref, ...)
================================================  =============  ==============================

Total 3 B + C + 10 L (``DATE_LAYERS_*``). For T = 12, B = 10, C = 4 that is
92.75 P + 7.3 P = 100.1 P, about 10 float32 copies of the input bands (the numpy kernels of
commit f6e6ddb peaked at 188 P inside ``np.nanmedian``, the first compiled ones at 130.6 P).

The stack evidence (``pipeline.kernels._evidence``) runs before ``fuse_dates`` and works on
single-band (T, Y, X) layers (lower envelopes of blue and HOT, the clear median and log
ratios band by band, snow change): about 23 P + 1 P per band at its own peak, below the
fusion's (a float64 copy of the whole block, as it first did, put it at 11 P per band).

Time blocks (``restore``'s ``time_block`` with ``FusionConfig.time_window_dates``): T is
then the dates one block holds, ``block_dates(time_block, window)`` = time_block + 2 x window
(at most the series), and the task's memory no longer grows with the search.
The per-date term shrinks as T grows; with few dates it is the larger part. Counted on the
kernels of this module's last change; after a kernel change recount:
``tests/test_bench_speed.py`` compares this count with the heap peak numpy really allocates in
``restore`` (tracemalloc) and fails when they drift apart by more than 15 %. The scene
estimation runs on a sample outside the restore tasks (in the flows, one task on a worker)
and does not scale with the chunk: about ``DEFAULT_SAMPLE_PIXELS`` per date, and for a
series longer than 12 dates no more pixel-dates than 12 dates of the same grid
(``pipeline.restore.scene_sample_stride``; at the per-date default it held the whole series
and grew with it: 9.9 GiB on one worker at 146 dates of a 256 px area, ``benchmark
memory``); ``restore`` frees the sample's prior layers before the blocks are restored. Its robust pair fit holds up to 40 000 pixels x T x B float64 (38 MB
at T = 12, B = 10), which is the peak of an in-memory ``restore`` of a cube smaller than about
250 px at that T and B (measured 1.15 x this count at 160 px, 1.00 x at 256 px).

Worker model: worker RSS = idle process RSS (Python, numpy, dask, GDAL; measured, or
``DEFAULT_WORKER_BASELINE_BYTES``) + threads x (task peak + staging), where staging is what a
worker holds beside a running task: the stacked input chunk without halo ((B + 1) P0: it stays
until the neighbouring tasks have cut their halo from it) and the trimmed output chunk waiting
for its Zarr write ((B + 7) P0); P0 is P without the halo. Decoded COG tiles, compressed Zarr
buffers and the allocator's free lists are not modelled; the benchmark's measured / predicted
ratio shows how much they add.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = [
    "DEFAULT_WORKER_BASELINE_BYTES",
    "MemoryPlan",
    "block_dates",
    "plan_time_block",
    "DATE_LAYERS_FIXED",
    "DATE_LAYERS_PER_BAND",
    "DATE_LAYERS_PER_CANDIDATE",
    "DEFAULT_CANDIDATES",
    "KERNEL_LAYERS_PER_BAND",
    "KERNEL_LAYERS_FIXED",
    "MemoryEstimate",
    "effective_halo",
    "estimate_memory",
]

#: Float32 per-pixel layers (x P) held for the whole block, per band and fixed (module docstring).
KERNEL_LAYERS_PER_BAND = 1 + 1 + 1 + 2 + 1  # input, copy, output, t_b + J, fused = 6
KERNEL_LAYERS_FIXED = (
    1 + 7 + 2 + 2 + 5.25 + 10 + 6 + 0.5
)  # SCL, quality out, t/c, evidence, fused quality, scores, evidence in fusion, masks = 33.75
#: Float64 single-date layers (x L) of one target date's working set, per band, per candidate
#: date and fixed (module docstring).
DATE_LAYERS_PER_BAND = 3  # haze readings, reference, refined J_phys
DATE_LAYERS_PER_CANDIDATE = 1  # blend weight
DATE_LAYERS_FIXED = 10
#: Candidate dates of the reference search (``FusionConfig.max_candidates``' default).
DEFAULT_CANDIDATES = 4
#: Idle RSS of a Dask worker process with numpy, dask, xarray, rasterio and odc-stac imported.
DEFAULT_WORKER_BASELINE_BYTES = 350 * 2**20
_FLOAT32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted bytes for one restore task and one worker (see the module docstring)."""

    chunk_size: int
    dates: int
    bands: int
    halo: float
    threads_per_worker: int
    has_scl: bool
    kernel_layers: float  # float32 per-pixel layers (x P) live at the kernel's peak
    input_block_bytes: int  # the padded (T, B [+1], y, x) float32 block a task receives
    task_bytes: int  # peak of one task (input, temporaries and output)
    staging_bytes: int  # what a worker holds beside each running task
    worker_baseline_bytes: int
    worker_bytes: int  # baseline + threads x (task + staging)

    def as_dict(self) -> dict:
        return asdict(self)


def effective_halo(area: int, chunk_size: int, halo: int) -> float:
    """Halo per side of the largest padded block of an ``area`` px cube in ``chunk_size`` chunks.

    ``map_overlap`` (boundary "none") pads a block only toward its neighbours: one chunk
    along an axis gets no halo, two chunks get it on one side each (halo / 2 per side on
    average), three or more give an interior block the full halo on both sides.
    """
    chunks = -(-area // chunk_size)
    if chunks <= 1:
        return 0.0
    return halo / 2 if chunks == 2 else float(halo)


def estimate_memory(
    chunk_size: int,
    dates: int,
    bands: int,
    *,
    halo: float,
    threads_per_worker: int = 1,
    has_scl: bool = True,
    worker_baseline_bytes: int = DEFAULT_WORKER_BASELINE_BYTES,
    candidates: int = DEFAULT_CANDIDATES,
) -> MemoryEstimate:
    """Predict the peak bytes of one ``restore`` task and of one worker.

    ``chunk_size`` is the spatial chunk side (px), ``halo`` the overlap on each side
    (``prior.halo + fusion.halo``; 0 for the in-memory path, where the block is the whole
    array; ``effective_halo`` for a cube of only one or two chunks along an axis, where
    ``map_overlap`` pads fewer sides), ``worker_baseline_bytes`` the idle RSS of a worker process (measure it where
    you can: it depends on the installed libraries), ``candidates`` the fusion's
    ``max_candidates``.
    """
    for name, value in (("chunk_size", chunk_size), ("dates", dates), ("bands", bands)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    if threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
    if candidates < 1:
        raise ValueError(f"candidates must be at least 1, got {candidates}")
    layer = dates * (chunk_size + 2 * halo) ** 2 * _FLOAT32  # P
    layer0 = dates * chunk_size**2 * _FLOAT32  # P0
    scl = 1 if has_scl else 0
    cand = min(candidates, dates - 1)
    date_layers = (
        DATE_LAYERS_PER_BAND * bands + DATE_LAYERS_PER_CANDIDATE * cand + DATE_LAYERS_FIXED
    )
    # one single-date float64 layer L is 2 / T of P
    layers = (
        KERNEL_LAYERS_PER_BAND * bands + KERNEL_LAYERS_FIXED - (1 - scl) + date_layers * 2 / dates
    )
    task = int(round(layers * layer))
    staging = (bands + scl) * layer0 + (bands + 7) * layer0
    worker = worker_baseline_bytes + threads_per_worker * (task + staging)
    return MemoryEstimate(
        chunk_size=chunk_size,
        dates=dates,
        bands=bands,
        halo=halo,
        threads_per_worker=threads_per_worker,
        has_scl=has_scl,
        kernel_layers=layers,
        input_block_bytes=int(round((bands + scl) * layer)),
        task_bytes=task,
        staging_bytes=staging,
        worker_baseline_bytes=int(worker_baseline_bytes),
        worker_bytes=int(worker),
    )


def block_dates(dates: int, time_block: int | None, window_dates: int | None) -> int:
    """Dates one restore task holds: the whole series without a window, else the block's
    ``time_block`` targets plus ``window_dates`` of overlap on each side (at most the series)."""
    if window_dates is None or time_block is None:
        return dates
    return min(dates, time_block + 2 * window_dates)


@dataclass(frozen=True)
class MemoryPlan:
    """What ``plan_time_block`` chose, and the estimate it rests on."""

    time_block: int | None  # target dates per block (None: the whole series, no window)
    block_dates: int  # dates a task holds
    estimate: MemoryEstimate


def plan_time_block(
    chunk_size: int,
    dates: int,
    bands: int,
    *,
    halo: float,
    memory_limit: int,
    window_dates: int | None,
    threads_per_worker: int = 1,
    has_scl: bool = True,
    worker_baseline_bytes: int = DEFAULT_WORKER_BASELINE_BYTES,
    candidates: int = DEFAULT_CANDIDATES,
    headroom: float = 0.8,
) -> MemoryPlan:
    """The largest time block whose tasks fit ``headroom`` x ``memory_limit`` per worker.

    Raises ValueError naming the setting that would make it fit (a smaller ``--chunk-size``,
    a ``--time-window-dates``, fewer ``--threads`` or a larger ``--memory-limit``).
    """
    budget = headroom * memory_limit

    def estimate(held: int) -> MemoryEstimate:
        return estimate_memory(
            chunk_size,
            held,
            bands,
            halo=halo,
            threads_per_worker=threads_per_worker,
            has_scl=has_scl,
            worker_baseline_bytes=worker_baseline_bytes,
            candidates=candidates,
        )

    if window_dates is None:
        est = estimate(dates)
        if est.worker_bytes <= budget:
            return MemoryPlan(None, dates, est)
        raise ValueError(_refusal(est, memory_limit, chunk_size, "the whole series of", dates))
    best: MemoryPlan | None = None
    for block in range(1, dates + 1):
        held = block_dates(dates, block, window_dates)
        est = estimate(held)
        if est.worker_bytes > budget:
            break
        best = MemoryPlan(block, held, est)
        if held == dates:
            break
    if best is None:
        est = estimate(block_dates(dates, 1, window_dates))
        raise ValueError(_refusal(est, memory_limit, chunk_size, "a block of", est.dates))
    return best


def _refusal(est: MemoryEstimate, limit: int, chunk: int, what: str, held: int) -> str:
    gib = 2**30
    smaller = max(64, 2 ** int(math.log2(max(chunk // 2, 64))))
    return (
        f"a restore task holding {what} {held} dates of a {chunk} px chunk needs about "
        f"{est.worker_bytes / gib:.1f} GiB per worker, over the worker memory limit of "
        f"{limit / gib:.1f} GiB; fix: a smaller --chunk-size (e.g. {smaller}), a bounded "
        f"--time-window-dates (e.g. 6), fewer --threads, or a larger --memory-limit "
        f"(at least {est.worker_bytes / 0.8 / gib:.1f}GiB)"
    )

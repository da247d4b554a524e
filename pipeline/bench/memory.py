"""Memory calculator for the restoration: bytes per task and per Dask worker (STYLE habit 6).

``estimate_memory`` predicts, from the chunk size, the number of dates T and bands B, the
halo and the threads per worker, the peak memory of one ``restore`` task and of one worker
process. The speed benchmark (``pipeline.bench.speed``) measures both and reports
measured / predicted, so the model is checked on every run.

Units: P = T x (chunk + 2 halo)^2 x 4 bytes, one float32 per-pixel layer of a task's block
(the block includes the halo because ``map_overlap`` hands the kernel the padded block), and
L = (chunk + 2 halo)^2 x 8 bytes = 2 P / T, one float64 layer of a single date.

Kernel temporaries (counted by reading ``pipeline.restore._restore_block``,
``pipeline.priors._physics`` and ``pipeline.kernels``, and checked against the tracemalloc
snapshot at the heap peak). Since the compiled kernels (``pipeline.kernels._numba``) the
whole-stack temporaries are gone from the fusion step (the median of
``spectral_consistency`` no longer goes through numpy's masked arrays, the local
harmonisation keeps its window moments in an O(radius x width) ring), and the peak is in the
per-date loop of ``fuse_dates``, inside ``_temporal_refinement``. Live there:

Held for the whole block (x P):

================================================  =============  ==============================
array                                             size (x P)     where
================================================  =============  ==============================
input block (bands + SCL as float32)              B + 1          ``restore._stack`` / overlap
contiguous copy of the bands                      B              ``_restore_block``
output block (bands + 5 quality layers)           B + 5          ``_restore_block`` (np.empty)
t_b (band transmission) and J_phys (float32)      2 B            ``PhysicsPrior.block``
t_ref, confidence (float32)                       2              ``PhysicsPrior.block``
J_phys as float64                                 2 B            ``fuse_dates`` (j64)
fused bands (float32)                             B              ``fuse_dates`` (out)
4 float32 quality layers + uint8 flag             4.25           ``fuse_dates``
q, consistency, base score, clear, prior factor   10             ``fuse_dates`` (float64 each)
valid, eligible (bool)                            0.5            ``fuse_dates``
================================================  =============  ==============================

Total 8 B + 22.75 with SCL (``KERNEL_LAYERS_PER_BAND``, ``KERNEL_LAYERS_FIXED``), one P less
without.

Working set of one target date (x L; C = candidates = min(max_candidates, T - 1)):

================================================  =============  ==============================
array                                             size (x L)     where
================================================  =============  ==============================
band temporaries of the temporal transmission     9.125 B        ``temporal_band_transmission``
reference, its accumulator, last date's blend     4 B            ``fuse_dates`` step 3 / 6
local gain and offset (float32)                   B              ``harmonise_local``
candidate scores and blend weights                2 C            ``fuse_dates`` step 2
per-pixel layers (float64 and a few bool/f32)     17.625         ``fuse_dates``, refinement
================================================  =============  ==============================

Total 14.125 B + 2 C + 17.625 L (``DATE_LAYERS_*``). For T = 12, B = 10, C = 4 that is
102.75 P + 27.8 P = 130.6 P, about 13 float32 copies of the input bands (the numpy kernels of
commit f6e6ddb peaked at 188 P inside ``np.nanmedian``). The per-date term shrinks as T grows;
with few dates it is the larger part. Counted on the kernels of this module's last
change; after a kernel change recount: ``tests/test_bench_speed.py`` compares this count with
the heap peak numpy really allocates in ``restore`` (tracemalloc) and fails when they drift
apart by more than ~25 %. The scene estimation runs on a fixed-size sample
(``DEFAULT_SAMPLE_PIXELS`` per date) outside the worker tasks and does not scale with the
chunk; the in-memory ``restore`` holds the prior's layers on that sample (about
(2 B + 4) x 4 bytes per sampled pixel and date) beside the block, so a small in-memory cube
(sampled whole) measures up to ~15 % above this count.

Worker model: worker RSS = idle process RSS (Python, numpy, dask, GDAL; measured, or
``DEFAULT_WORKER_BASELINE_BYTES``) + threads x (task peak + staging), where staging is what a
worker holds beside a running task: the stacked input chunk without halo ((B + 1) P0: it stays
until the neighbouring tasks have cut their halo from it) and the trimmed output chunk waiting
for its Zarr write ((B + 5) P0); P0 is P without the halo. Decoded COG tiles, compressed Zarr
buffers and the allocator's free lists are not modelled; the benchmark's measured / predicted
ratio shows how much they add.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = [
    "DEFAULT_WORKER_BASELINE_BYTES",
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
KERNEL_LAYERS_PER_BAND = 1 + 1 + 1 + 2 + 2 + 1  # input, copy, output, t_b + J, J f64, fused = 8
KERNEL_LAYERS_FIXED = (
    1 + 5 + 2 + 4.25 + 10 + 0.5
)  # SCL, quality out, t/c, fused quality, ... = 22.75
#: Float64 single-date layers (x L) of one target date's working set, per band, per candidate
#: date and fixed (module docstring).
DATE_LAYERS_PER_BAND = 9.125 + 4 + 1  # temporal transmission, reference/blend, gain/offset = 14.125
DATE_LAYERS_PER_CANDIDATE = 2  # score and blend weight
DATE_LAYERS_FIXED = 17.625
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
    staging = (bands + scl) * layer0 + (bands + 5) * layer0
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

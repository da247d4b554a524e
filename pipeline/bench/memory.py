"""Memory calculator for the restoration: bytes per task and per Dask worker (STYLE habit 6).

``estimate_memory`` predicts, from the chunk size, the number of dates T and bands B, the
halo and the threads per worker, the peak memory of one ``restore`` task and of one worker
process. The speed benchmark (``pipeline.bench.speed``) measures both and reports
measured / predicted, so the model is checked on every run.

Units: P = T x (chunk + 2 halo)^2 x 4 bytes, one float32 per-pixel layer of a task's block
(the block includes the halo because ``map_overlap`` hands the kernel the padded block).

Kernel temporaries (counted by reading ``pipeline.restore._restore_block``,
``pipeline.priors._physics`` and ``pipeline.kernels``; the peak is inside
``fuse_dates -> spectral_consistency -> nanmedian``):

================================================  =============  ==============================
array                                             size (x P)     where
================================================  =============  ==============================
input block (bands + SCL as float32)              B + 1          ``restore._stack`` / overlap
contiguous copy of the bands                      B              ``_restore_block``
output block (bands + 5 quality layers)           B + 5          ``_restore_block`` (np.empty)
t_b (band transmission, float32)                  B              ``PhysicsPrior.block``
J_phys (float32)                                  B              ``invert``
J_phys as float64                                 2 B            ``fuse_dates`` (j64)
t_ref, confidence (float32)                       2              ``PhysicsPrior.block``
q (float64), valid + eligible (bool)              2.5            ``fuse_dates``
--- live at the peak, inside spectral_consistency ---
masked J (float64)                                2 B            ``np.where(eligible, J, nan)``
NaN mask of the masked array (bool)               0.25 B         ``np.nanmedian`` (T < 600 path)
sorted copy (float64) + its mask                  2.25 B         ``np.ma.sort``
filled copy (float64)                             2 B            ``MaskedArray.sort``
argsort indices (int64)                           2 B            ``MaskedArray.sort``
take_along_axis result (float64) + its mask       2.25 B         ``MaskedArray.sort``
================================================  =============  ==============================

Total: (17.75 B + 10.5) P with SCL, one P less without. For B = 10 that is 188 P, about 19
float32 copies of the input bands: ``np.nanmedian`` over the time axis (numpy's masked-array
path for short axes) alone accounts for 10.75 B P. The per-date work after it
(reference, harmonisation moments) holds about 20 B P / T more and stays below that peak.
Counted on the kernels of commit 18c9026; the kernels are being reworked, so recount after
a change: ``tests/test_bench_speed.py`` compares this count with the heap peak numpy really
allocates in ``restore`` (tracemalloc) and fails when they drift apart by more than ~25 %.
The scene estimation runs on a fixed-size sample (``DEFAULT_SAMPLE_PIXELS``) and does not
scale with the chunk.

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
    "KERNEL_LAYERS_PER_BAND",
    "KERNEL_LAYERS_FIXED",
    "MemoryEstimate",
    "effective_halo",
    "estimate_memory",
]

#: Float32 per-pixel layers the kernel holds at its peak, per band and fixed (module docstring).
KERNEL_LAYERS_PER_BAND = 1 + 1 + 1 + 1 + 1 + 2 + 2 + 0.25 + 2.25 + 2 + 2 + 2.25  # = 17.75
KERNEL_LAYERS_FIXED = 1 + 5 + 2 + 2.5  # SCL input + quality outputs + t_ref/conf + q/masks = 10.5
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
    kernel_layers: float  # float32 per-pixel layers live at the kernel's peak
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
) -> MemoryEstimate:
    """Predict the peak bytes of one ``restore`` task and of one worker.

    ``chunk_size`` is the spatial chunk side (px), ``halo`` the overlap on each side
    (``prior.halo + fusion.halo``; 0 for the in-memory path, where the block is the whole
    array; ``effective_halo`` for a cube of only one or two chunks along an axis, where
    ``map_overlap`` pads fewer sides), ``worker_baseline_bytes`` the idle RSS of a worker process (measure it where
    you can: it depends on the installed libraries).
    """
    for name, value in (("chunk_size", chunk_size), ("dates", dates), ("bands", bands)):
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    if threads_per_worker < 1:
        raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker}")
    layer = dates * (chunk_size + 2 * halo) ** 2 * _FLOAT32  # P
    layer0 = dates * chunk_size**2 * _FLOAT32  # P0
    scl = 1 if has_scl else 0
    layers = KERNEL_LAYERS_PER_BAND * bands + KERNEL_LAYERS_FIXED - (1 - scl)
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

"""Learned cloud / shadow evidence: the ``ukis-csmask`` U-Nets (DLR, Apache-2.0).

``ukis-csmask`` ships ONNX U-Nets (EfficientNet-B4 encoder) that label each pixel of a
Sentinel-2 image as background, cloud or cloud shadow, trained on CloudSEN12+ and SPARCS
at about 30 m. There are L1C (top of atmosphere) and L2A (surface reflectance) models,
each for 4 bands (B02 B03 B04 B08) or 6 bands (plus B11 B12); the weights are inside the
package's wheel, so nothing is downloaded at run time. ``CSMaskSource`` turns the model's
class *probabilities* (softmax of its logits, not only the argmax) into ``CloudEvidence``.

Per block and date
------------------
1. The model's bands, found by name (any band order of the cube), are averaged over
   ``scale`` x ``scale`` pixel cells of a GLOBAL grid (cell (i, j) covers rows
   [i s, (i + 1) s) of the whole array), which brings a 10 m cube to the model's ~30 m.
   Cells with no observation are nodata; a cell cut by the array's far edge averages what
   it has.
2. Standardised per band with the model's training statistics (from the JSON beside each
   ONNX file in the package), in the model's band order.
3. Cut into model-sized tiles (256 cells) on a global tile grid: tile k starts at cell
   k (256 - overlap) - overlap, so the array's first cell lies ``overlap`` cells inside the
   first tile, like the package's own padding. Parts of a tile beyond the array are filled
   by mirroring the tile's own in-array part (so a tile depends on nothing but its own
   cells), nodata cells by the training mean (0 after standardisation).
4. Each tile's softmax probabilities are blended with a tapered-cosine (Tukey) window, as
   the package does, but normalised by the summed window so the result stays a probability.
5. Cell probabilities are interpolated BILINEARLY between cell centres to the block's
   pixels. Bilinear, not nearest: nearest would print the 30 m cell grid as 3 x 3 steps into
   a 10 m evidence map that is fused in log-odds with sources at 10 m; the model cannot
   place an edge more finely than a cell anyway, and the interpolation is continuous across
   chunks. Pixels whose input has no value in a model band are NaN (no opinion).

Steps 1 and 5 are single compiled passes over the block (``_csmask_kernels``); the rest
of the time is the network (about 0.4 CPU-seconds per megapixel of 10 m input).

A block runs only the tiles that lie entirely inside it (or are cut only by the array's
edge), so every tile, hence every value, is the same whichever chunk computes it; the halo
(``CSMaskSource.halo``) makes every tile that touches an output pixel, plus the neighbouring
cell the interpolation reads, lie inside the halo-padded block.

The ONNX session is loaded once per worker process (a module-level cache keyed by model file,
execution providers and thread count) on first use, never held in the source object, so the
source stays small, picklable and tokenizable.

Limitations
-----------
* The tile is fixed by the model at 256 cells (7.68 km at 10 m input, scale 3); the halo is
  (256 + 1) x scale pixels (771 px at scale 3), so small chunks repeat much of their
  neighbours' work: a 2048 px chunk (683 cells) runs 16-25 tiles where 11 would cover
  it (4096 px: 49-64 for 45), so larger chunks pay less.
* The model sees 30 m cells: small clouds and thin shadow rims below a cell are smeared.
* Probabilities are the network's softmax, not calibrated frequencies; ``weight`` tempers
  them in the log-odds fusion.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._base import BlockLocation, SceneParams
from ._csmask_kernels import cell_means, upsample_masked
from ._evidence import CloudEvidence, EvidenceSource
from ._vlm_mapping import _axis_weights
from ._worker_cache import LoadEvent, WorkerCache

log = logging.getLogger(__name__)

#: Sentinel-2 asset key of each band name the package's models use.
MODEL_BAND_KEYS = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "nir": "B08",
    "swir16": "B11",
    "swir22": "B12",
}
BANDS_4 = ("B02", "B03", "B04", "B08")
BANDS_6 = BANDS_4 + ("B11", "B12")

#: Side of the models' input tiles in cells (fixed in the ONNX graphs; checked on load).
TILE_CELLS = 256

#: Output classes of the models (channel order of the ONNX output).
CLASS_CLEAR, CLASS_CLOUD, CLASS_SHADOW = 0, 1, 2

INSTALL_HINT = "fix: pip install 'phyvlm-cr[csmask]' (ukis-csmask and onnxruntime)"

F32 = np.float32


@dataclass(frozen=True)
class CSMaskConfig:
    """Settings of the ``csmask`` evidence source (frozen: hashable, recorded in provenance).

    product_level: 'l2a' (surface reflectance, the pipeline's input) or 'l1c' (top of
        atmosphere) model.
    band_set: 'auto' (the 6-band model when B11 and B12 are in the cube, else 4 bands),
        '4' or '6'.
    scale: cube pixels per model cell along each axis; the models expect about 30 m, so 3
        for a 10 m cube, 1 for a cube already at 30 m.
    overlap: cells by which neighbouring model tiles overlap (and the tapered blend spans).
    batch_size: tiles per ONNX run (memory vs speed; larger on a GPU).
    device: 'auto' (CUDA when onnxruntime has it, else CPU), 'cpu', 'cuda' or 'cuda:N'.
    threads: onnxruntime intra-op threads per session (0: onnxruntime's choice, all cores;
        set it to cores / worker threads on multi-threaded Dask workers).
    weight: weight of this source's log-odds in the evidence fusion.
    gpu_resource: > 0 makes each block task request this much Dask resource 'GPU'.
    """

    product_level: str = "l2a"
    band_set: str = "auto"
    scale: int = 3
    overlap: int = 52
    batch_size: int = 8
    device: str = "auto"
    threads: int = 0
    weight: float = 1.0
    gpu_resource: float = 0.0

    def __post_init__(self) -> None:
        if self.product_level not in ("l2a", "l1c"):
            raise ValueError(
                f"CSMaskConfig.product_level must be 'l2a' or 'l1c', got {self.product_level!r}"
            )
        if self.band_set not in ("auto", "4", "6"):
            raise ValueError(
                f"CSMaskConfig.band_set must be 'auto', '4' or '6', got {self.band_set!r}"
            )
        if int(self.scale) != self.scale or self.scale < 1:
            raise ValueError(
                f"CSMaskConfig.scale must be an integer >= 1 (cube pixels per ~30 m model "
                f"cell: 3 for a 10 m cube), got {self.scale!r}"
            )
        object.__setattr__(self, "scale", int(self.scale))  # 3.0 -> 3: same token, int math
        if not 1 <= self.overlap <= 128:
            raise ValueError(f"CSMaskConfig.overlap must be 1..128 cells, got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError("CSMaskConfig.batch_size must be >= 1")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(
                f"CSMaskConfig.device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}"
            )
        if self.threads < 0:
            raise ValueError("CSMaskConfig.threads must be >= 0 (0: onnxruntime's choice)")
        if not math.isfinite(self.weight) or self.weight < 0:
            raise ValueError(f"CSMaskConfig.weight must be finite and >= 0, got {self.weight}")
        if self.gpu_resource < 0:
            raise ValueError("CSMaskConfig.gpu_resource must be >= 0")


# --------------------------------------------------------------------------- the model


class ModelSpec(NamedTuple):
    """What identifies a loaded session (the cache key)."""

    model_file: str
    providers: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    threads: int


class CSMaskModel:
    """A loaded ONNX session and the model's preprocessing facts (from its JSON)."""

    def __init__(self, spec: ModelSpec) -> None:
        import onnxruntime

        meta = json.loads(Path(spec.model_file).with_suffix(".json").read_text())
        stats = meta["data"]["dataset_statistics"]
        self.band_keys = tuple(MODEL_BAND_KEYS[name] for name in stats["band_names"])
        self.mean = np.asarray(stats["img"][0], dtype=F32)
        self.std = np.asarray(stats["img"][1], dtype=F32)
        self.tile = int(meta["data"]["target_size"][0])
        self.version = str(meta["model"]["version"])
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = spec.threads
        providers = [(name, dict(opts)) for name, opts in spec.providers]
        self.session = onnxruntime.InferenceSession(
            spec.model_file, sess_options=options, providers=providers
        )
        self.input_name = self.session.get_inputs()[0].name
        self.providers = tuple(self.session.get_providers())

    def probabilities(self, tiles: np.ndarray) -> np.ndarray:
        """(N, 3, S, S) float32 class probabilities of standardised (N, C, S, S) tiles."""
        logits = np.asarray(self.session.run(None, {self.input_name: tiles})[0], dtype=F32)
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


def _describe_model(spec: ModelSpec, model: CSMaskModel) -> str:
    return f"{Path(spec.model_file).name} ({model.version}) with {', '.join(model.providers)}"


#: The process's loaded ONNX sessions (one per model file, providers and threads).
_CACHE: WorkerCache[ModelSpec, CSMaskModel] = WorkerCache(
    "ukis-csmask model", lambda spec: CSMaskModel(spec), _describe_model
)


def load_events() -> tuple[LoadEvent, ...]:
    """Every model load of this process (for logs, and tests of once-per-worker)."""
    return _CACHE.events()


def clear_cache() -> None:
    """Forget this process's loaded sessions (frees their memory)."""
    _CACHE.clear()


def get_model(spec: ModelSpec) -> CSMaskModel:
    """The process's session for ``spec``, loaded on first use (thread-safe)."""
    return _CACHE.get(spec)


def package_dir() -> Path:
    """Folder of the installed ``ukis_csmask`` package (its ONNX weights live there)."""
    try:
        import onnxruntime  # noqa: F401  (the package imports it too; name it in the error)
        import ukis_csmask
    except ImportError as exc:
        raise ImportError(
            f"the csmask evidence source needs ukis-csmask and onnxruntime ({exc}); "
            f"{INSTALL_HINT}; for CUDA install onnxruntime-gpu instead of onnxruntime"
        ) from exc
    return Path(ukis_csmask.__file__).parent


def package_version() -> str:
    import ukis_csmask

    return str(getattr(ukis_csmask, "__version__", "unknown"))


def execution_providers(device: str) -> tuple[tuple[str, tuple[tuple[str, str], ...]], ...]:
    """onnxruntime providers (name, options) for a ``CSMaskConfig.device`` setting."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    cpu = ("CPUExecutionProvider", ())
    if device == "cpu":
        return (cpu,)
    has_cuda = "CUDAExecutionProvider" in available
    if device == "auto":
        return (("CUDAExecutionProvider", ()), cpu) if has_cuda else (cpu,)
    if not has_cuda:
        raise RuntimeError(
            f"device={device!r} but this onnxruntime has no CUDAExecutionProvider (it has "
            f"{', '.join(available)}); fix: pip uninstall onnxruntime && pip install "
            "onnxruntime-gpu, or use device='auto' / 'cpu'"
        )
    device_id = device.split(":", 1)[1] if ":" in device else "0"
    return (("CUDAExecutionProvider", (("device_id", device_id),)), cpu)


# --------------------------------------------------------------------------- global grids


def cells_inside(origin: int, size: int, total: int, scale: int) -> tuple[int, int]:
    """[first, stop) global cells (one axis) whose pixels all lie in the block.

    The block covers global pixels [origin, origin + size) of an axis of ``total`` pixels; the
    last cell of the array may be cut by the array's end and still counts as complete.
    """
    first = -(-origin // scale)
    end = origin + size
    stop = -(-total // scale) if end >= total else end // scale
    return first, max(first, stop)


def tile_starts(total_cells: int, tile: int, overlap: int) -> np.ndarray:
    """Global first cell of every tile along an axis of ``total_cells`` cells.

    Tile k starts at k (tile - overlap) - overlap; tiles run until the last cell lies at
    least ``overlap`` cells inside the last tile (outside the tapered rim).
    """
    step = tile - overlap
    count = max(0, -(-(total_cells - tile + 2 * overlap) // step)) + 1
    return np.arange(count) * step - overlap


def tiles_inside(
    starts: np.ndarray, span: tuple[int, int], total_cells: int, tile: int
) -> np.ndarray:
    """The tile starts whose in-array cells all lie in the block's cell span."""
    lo = np.maximum(starts, 0)
    hi = np.minimum(starts + tile, total_cells)
    return starts[(lo >= span[0]) & (hi <= span[1])]


def taper_window(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) tapered-cosine blend weights, > 0 everywhere (so no cell divides by 0)."""
    from scipy.signal.windows import tukey

    w1 = np.maximum(tukey(tile, alpha=min(1.0, 2.0 * overlap / tile)), 1e-6)
    return np.outer(w1, w1).astype(F32)


class _Tile(NamedTuple):
    t: int
    y0: int  # global first cell of the tile
    x0: int


# --------------------------------------------------------------------------- the source


class CSMaskSource(EvidenceSource):
    """Cloud and shadow probabilities from a ``ukis-csmask`` U-Net (module docstring)."""

    name = "csmask"

    def __init__(self, config: CSMaskConfig | None = None, **kw: Any) -> None:
        if config is not None and kw:
            raise TypeError("CSMaskSource takes a CSMaskConfig or keywords, not both")
        self.config = config if config is not None else CSMaskConfig(**kw)
        self.weight = float(self.config.weight)
        package_dir()  # fail on the client, before a job starts, when the package is absent
        self._version = package_version()

    def params(self) -> dict[str, Any]:
        return {**asdict(self.config), "ukis_csmask_version": self._version}

    @property
    def halo(self) -> int:
        # Pixel r lies in cell c = r // s; the bilinear step reads cells c - 1 .. c + 1, and a
        # cell's value needs every tile over it (tiles of T cells), so cells c - T .. c + T,
        # i.e. pixels (c - T) s .. (c + T + 1) s - 1: at most (T + 1) s - 1 px from r.
        return (TILE_CELLS + 1) * self.config.scale

    @property
    def resources(self) -> dict[str, float] | None:
        return {"GPU": self.config.gpu_resource} if self.config.gpu_resource > 0 else None

    def model_bands(self, bands: tuple[str, ...]) -> tuple[str, ...]:
        """The cube bands the model needs (in the model's order), or a ValueError."""
        have = set(bands)
        want = self.config.band_set
        six = want == "6" or (want == "auto" and {"B11", "B12"} <= have)
        needed = BANDS_6 if six else BANDS_4
        missing = [b for b in needed if b not in have]
        if missing:
            raise ValueError(
                f"the csmask evidence source ({'6' if six else '4'}-band model) needs bands "
                f"{', '.join(needed)}; the cube lacks {', '.join(missing)}; fix: load the "
                f"cube with bands including {', '.join(needed)}"
            )
        return needed

    def model_spec(self, bands: tuple[str, ...]) -> ModelSpec:
        nb = len(self.model_bands(bands))
        model_file = package_dir() / f"model_{nb}b_{self.config.product_level}.onnx"
        if not model_file.exists():
            raise FileNotFoundError(
                f"{model_file} is missing from the ukis-csmask install; fix: pip install "
                "--force-reinstall 'ukis-csmask>=1.0'"
            )
        return ModelSpec(
            str(model_file), execution_providers(self.config.device), int(self.config.threads)
        )

    def evidence(
        self,
        data: np.ndarray,
        bands: tuple[str, ...],
        scene: SceneParams | None,
        location: BlockLocation,
    ) -> CloudEvidence:
        """(T, Y, X) cloud and shadow probabilities of a (T, B, Y, X) block (``scene`` unused)."""
        values, has_value, spans = self.cell_probabilities(data, bands, location)
        if values.shape[2] == 0 or values.shape[3] == 0:  # no complete cell in the block
            nan = np.full((data.shape[0],) + tuple(data.shape[2:]), np.nan, dtype=F32)
            return CloudEvidence(nan, nan.copy())
        scale = self.config.scale
        weights = [
            _axis_weights(
                location.origin[axis],
                int(data.shape[2 + axis]),
                spans[axis],
                -(-location.shape[axis] // scale),
                scale,
            )
            for axis in (0, 1)
        ]
        band_index = np.array([bands.index(b) for b in self.model_bands(bands)], dtype=np.int64)
        pix = upsample_masked(
            values, has_value, *weights[0], *weights[1], np.asarray(data), band_index
        )
        return CloudEvidence(pix[:, 0], pix[:, 1])

    def cell_probabilities(
        self, data: np.ndarray, bands: tuple[str, ...], location: BlockLocation
    ) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], tuple[int, int]]]:
        """Cloud and shadow probabilities of the model cells complete in this block.

        Returns (T, 2, Cy, Cx) float32 probabilities (cloud, shadow), the (T, Cy, Cx) mask of
        cells that have them (covered by a tile and observed) and the cells' global spans.
        """
        cfg = self.config
        data = np.asarray(data)
        if data.ndim != 4 or data.shape[1] != len(bands):
            raise ValueError(
                f"csmask evidence expects a (T, B, Y, X) block with B = {len(bands)} bands "
                f"({', '.join(bands)}), got shape {data.shape}"
            )
        spec = self.model_spec(bands)
        model = get_model(spec)
        if model.tile != TILE_CELLS:
            raise RuntimeError(
                f"{Path(spec.model_file).name} expects {model.tile} px tiles, this source "
                f"supports {TILE_CELLS}; fix: install ukis-csmask 1.x"
            )
        idx = [bands.index(b) for b in model.band_keys]
        ny, nx = data.shape[2:]
        oy, ox = location.origin
        gy, gx = location.shape
        spans = (
            cells_inside(oy, ny, gy, cfg.scale),
            cells_inside(ox, nx, gx, cfg.scale),
        )
        cells = cell_means(  # (T, C, Cy, Cx)
            data,
            np.asarray(idx, dtype=np.int64),
            spans[0][0] * cfg.scale - oy,
            spans[1][0] * cfg.scale - ox,
            spans[0][1] - spans[0][0],
            spans[1][1] - spans[1][0],
            cfg.scale,
        )
        observed = np.isfinite(cells).all(axis=1)
        norm = (cells - model.mean[:, None, None]) / model.std[:, None, None]
        norm = np.nan_to_num(norm, nan=0.0).astype(F32)

        ntime = data.shape[0]
        cy, cx = cells.shape[2:]
        total = (-(-gy // cfg.scale), -(-gx // cfg.scale))
        num = np.zeros((ntime, 2, cy, cx), dtype=np.float64)
        wsum = np.zeros((ntime, cy, cx), dtype=np.float64)
        tile, overlap = model.tile, cfg.overlap
        window = taper_window(tile, overlap)
        starts_y = tiles_inside(tile_starts(total[0], tile, overlap), spans[0], total[0], tile)
        starts_x = tiles_inside(tile_starts(total[1], tile, overlap), spans[1], total[1], tile)
        todo = [
            _Tile(t, int(y0), int(x0))
            for t in range(ntime)
            if observed[t].any()
            for y0 in starts_y
            for x0 in starts_x
        ]
        for batch in _batches(todo, cfg.batch_size):
            inputs = np.stack([self._cut(norm, k, spans, total, tile) for k in batch])
            out = model.probabilities(inputs)
            for k, p in zip(batch, out, strict=True):
                # The tile's window on the block's cells (in-array part only).
                ya, yb = max(k.y0, 0), min(k.y0 + tile, total[0])
                xa, xb = max(k.x0, 0), min(k.x0 + tile, total[1])
                tyy = slice(ya - k.y0, yb - k.y0)
                txx = slice(xa - k.x0, xb - k.x0)
                byy = slice(ya - spans[0][0], yb - spans[0][0])
                bxx = slice(xa - spans[1][0], xb - spans[1][0])
                w = window[tyy, txx]
                num[k.t, 0, byy, bxx] += w * p[CLASS_CLOUD, tyy, txx]
                num[k.t, 1, byy, bxx] += w * p[CLASS_SHADOW, tyy, txx]
                wsum[k.t, byy, bxx] += w
        has_value = (wsum > 0) & observed
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(has_value[:, None], num / np.maximum(wsum, 1e-12)[:, None], np.nan)
        log.debug(
            "csmask ran %d tiles (%s) for a %s block at %s",
            len(todo),
            Path(spec.model_file).name,
            data.shape,
            location.origin,
        )
        return values.astype(F32), has_value, spans

    @staticmethod
    def _cut(
        norm: np.ndarray,
        k: _Tile,
        spans: tuple[tuple[int, int], tuple[int, int]],
        total: tuple[int, int],
        tile: int,
    ) -> np.ndarray:
        """(C, tile, tile) model input of tile ``k``: its in-array cells, mirrored beyond."""
        ya, yb = max(k.y0, 0), min(k.y0 + tile, total[0])
        xa, xb = max(k.x0, 0), min(k.x0 + tile, total[1])
        part = norm[
            k.t,
            :,
            ya - spans[0][0] : yb - spans[0][0],
            xa - spans[1][0] : xb - spans[1][0],
        ]
        pad = ((0, 0), (ya - k.y0, k.y0 + tile - yb), (xa - k.x0, k.x0 + tile - xb))
        if any(p for pair in pad for p in pair):
            part = np.pad(part, pad, mode="symmetric")
        return np.ascontiguousarray(part, dtype=F32)


def _batches(items: list[_Tile], size: int) -> Iterator[list[_Tile]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]

"""PhyVLM-CR: physics-guided VLM-prior cloud removal for Sentinel-2 L2A.

The public API is small and stable; everything else is private to its module::

    items = pipeline.search(pipeline.SearchParams(bbox=..., datetime="2024-05-01/2024-05-31"))
    cube = pipeline.load_cube(items, pipeline.CubeConfig(bands=("B02", "B03", "B04", "B08")))
    restored = pipeline.restore(cube)              # every date, with quality layers
    monthly = pipeline.composite(restored, period="MS")
    pipeline.write_archive(restored, "out.zarr")
    report = pipeline.self_validate(cube)        # estimated error, from held-out clear pixels
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("phyvlm-cr")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from ._bands import DEFAULT_BANDS, SCL, WAVELENGTH_NM
from .archive import ArchiveConfig, ArchiveExistsError, open_archive, write_archive
from .catalog import (
    CatalogUnreachable,
    NoItemsFound,
    SearchError,
    SearchParams,
    search,
)
from .cluster import ClusterConfig, dask_client
from .compositing import composite
from .cube import CubeConfig, load_cube
from .restore import SceneState, estimate_scene_state, restore
from .tiling import TilingConfig, make_grid
from .validation import ValidationConfig, self_validate

__all__ = [
    "DEFAULT_BANDS",
    "SCL",
    "WAVELENGTH_NM",
    "ArchiveConfig",
    "ArchiveExistsError",
    "CatalogUnreachable",
    "NoItemsFound",
    "SearchError",
    "ClusterConfig",
    "CubeConfig",
    "SceneState",
    "SearchParams",
    "TilingConfig",
    "ValidationConfig",
    "composite",
    "dask_client",
    "estimate_scene_state",
    "load_cube",
    "make_grid",
    "open_archive",
    "restore",
    "search",
    "self_validate",
    "write_archive",
    "__version__",
]

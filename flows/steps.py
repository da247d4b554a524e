"""The library calls a run is made of, configured from a ``RunConfig`` in one place.

Both ways through an area (one grid, ``flows.run``; tile by tile, ``flows.tiled``) load,
restore, validate and describe their output through these functions, so they read the same
data, stamp the same dates and restore with the same settings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict
from typing import Any

import xarray as xr

import pipeline
from pipeline.catalog import is_planetary_computer
from pipeline.cube import load_cube, load_scene_sample
from pipeline.tiling import dates_axis
from pipeline.validation import ValidationResult

from .config import RunConfig

log = logging.getLogger(__name__)

__all__ = [
    "load_step",
    "prior_of",
    "provenance",
    "restore_step",
    "scene_sample_step",
    "signer_of",
    "error_layer_step",
    "validation_step",
    "wants_error_layer",
]


def signer_of(config: RunConfig) -> Any:
    """The read-time href signer: Planetary Computer SAS signing for its catalog, else None."""
    if is_planetary_computer(config.search.catalog):
        from pipeline._reading import planetary_computer_signer

        return planetary_computer_signer
    return None


def load_step(
    items: list,
    config: RunConfig,
    *,
    geobox: Any = None,
    read_context: str = "",
) -> xr.Dataset:
    """The lazy input cube of ``items``, one step per solar day, stamped with that day.

    ``geobox`` fixes the grid (a tile's, or the caller's); without it the grid follows the
    search area, ``config.cube.crs`` and ``config.cube.resolution``. Every run stamps its
    dates the same way: the solar day (midnight) that ``load_cube`` groups acquisitions by,
    which is also the time axis a tiled store shares between tiles.
    """
    cube = load_cube(
        items,
        config.cube,
        bbox=None if geobox is not None else config.search.bbox,
        geopolygon=None if geobox is not None else config.search.intersects,
        geobox=geobox,
        signer=signer_of(config),
        read_context=read_context,
    )
    days = dates_axis(items).as_unit("ns")
    if cube.sizes["time"] != len(days):
        where = f"{read_context}: " if read_context else ""
        raise RuntimeError(
            f"{where}the cube has {cube.sizes['time']} dates but its items span {len(days)} "
            "solar days; load_cube grouped them differently, please report it"
        )
    return cube.assign_coords(time=days)


def scene_sample_step(
    items: list, config: RunConfig, cube: xr.Dataset, *, read_context: str = ""
) -> xr.Dataset:
    """Scene parameters' sample of ``cube`` from the COGs' overviews (not a second full read),
    stamped with the cube's dates."""
    sample = load_scene_sample(
        items, config.cube, cube.odc.geobox, signer=signer_of(config), read_context=read_context
    )
    return sample.assign_coords(time=cube["time"])


def provenance(config: RunConfig, items: list, restored: Any) -> dict[str, Any]:
    """Archive attributes: software, search, items, prior and its parameters."""
    s = config.search
    return {
        "software": "phyvlm-cr",
        "software_version": pipeline.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "catalog": s.catalog,
        "collection": s.collection,
        "search_bbox": list(s.bbox) if s.bbox else "",
        "search_intersects": json.dumps(s.intersects) if s.intersects else "",
        "search_datetime": s.datetime,
        "search_max_cloud_cover": s.max_cloud_cover if s.max_cloud_cover is not None else "",
        "search_mgrs_tile": s.mgrs_tile or "",
        "item_ids": [it.id for it in items],
        "mode": config.mode,
        "period": config.period or "",
        "cube_config": json.dumps(asdict(config.cube)),
        "prior": restored.attrs.get("prior", config.prior),
        "prior_params": restored.attrs.get("prior_params", "{}"),
        "fusion_params": restored.attrs.get("fusion_params", "{}"),
        "Conventions": "CF-1.8",
    }


def prior_of(config: RunConfig) -> Any:
    """The configured prior (a small, picklable object; models load on the workers)."""
    return pipeline.priors.get_prior(config.prior, **dict(config.prior_options))


def restore_step(cube: Any, config: RunConfig, scene_sample: Any = None) -> Any:
    """Restore (and composite) a cube as ``config`` asks: the one place both flows call.

    ``scene_sample`` (``pipeline.cube.load_scene_sample``) spares the second read of the cube
    that a strided scene sample of a lazy cube costs.
    """
    return pipeline.restore(
        cube,
        prior=prior_of(config),
        mode=config.mode,
        period=config.period,
        scene_sample=scene_sample,
    )


def validation_step(
    cube: Any, config: RunConfig, labels: list[str] | None = None
) -> ValidationResult | None:
    """Self-validation of ``cube`` (or of one cube per tile, named by ``labels``) with the
    run's prior and options (None when disabled)."""
    if not config.validation.enabled:
        return None
    from pipeline.validation import self_validate

    prior = prior_of(config)
    log.info("self-validation on held-out clear pixels (%s)", config.validation)
    return self_validate(cube, prior=prior, config=config.validation, labels=labels)


def wants_error_layer(config: RunConfig) -> bool:
    """The per-pixel error layer is written for restored dates (not composites) of a run that
    validates itself: it is calibrated on that validation."""
    return config.validation.enabled and config.mode == "dates"


def error_layer_step(restored: Any, validation: ValidationResult | None) -> Any:
    """``restored`` with ``error_estimate`` from the validation's calibrated error model (NaN
    where the validation found no pixels to calibrate on), lazily."""
    from pipeline.validation import ERROR_LAYER

    model = validation.error_model if validation is not None else None
    if model is not None:
        return restored.assign({ERROR_LAYER: model.apply(restored)})
    nan = restored["confidence"].where(restored["confidence"] < -1).astype("float32")
    nan.attrs = {"long_name": "estimated error of the restored reflectance (no calibration)"}
    return restored.assign({ERROR_LAYER: nan})

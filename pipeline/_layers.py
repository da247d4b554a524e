"""Small helpers that ``restore`` and ``composite`` share: which variables are bands, how
per-date layers stack into one kernel array, and what ties a variable to its CRS."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ._bands import WAVELENGTH_NM


def spectral_bands(ds: xr.Dataset) -> tuple[str, ...]:
    """The variables of ``ds`` that are Sentinel-2 bands, in the dataset's order."""
    return tuple(str(v) for v in ds.data_vars if v in WAVELENGTH_NM)


def stack_layers(layers: list, ntime: int):
    """Stack (T, Y, X) layers into a (T, C, Y, X) float32 array, numpy or dask.

    With any dask layer, all are aligned to its spatial chunks and time and channel are
    one chunk each (the kernels need the whole series per chunk).
    """
    if any(isinstance(x, da.Array) for x in layers):
        ref = next(x for x in layers if isinstance(x, da.Array))
        chunks = ((ntime,), ref.chunks[1], ref.chunks[2])
        layers = [
            (x if isinstance(x, da.Array) else da.from_array(x, chunks=chunks))
            .astype(np.float32)
            .rechunk(chunks)
            for x in layers
        ]
        return da.stack(layers, axis=1).rechunk({0: -1, 1: -1})
    return np.stack([np.asarray(x, dtype=np.float32) for x in layers], axis=1)


def spatial_attrs(cube: xr.Dataset, bands: tuple[str, ...]) -> tuple[dict, dict]:
    """attrs / encoding entries that tie a variable to its CRS (grid_mapping)."""
    src = cube[bands[0]]
    attrs = {k: v for k, v in src.attrs.items() if k == "grid_mapping"}
    enc = {k: v for k, v in src.encoding.items() if k == "grid_mapping"}
    return attrs, enc

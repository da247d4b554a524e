"""Quicklook PNGs: cloudy input, restored output, truth, confidence and gate side by side; the
VLM prior's labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

RGB = ("B04", "B03", "B02")


def rgb_image(ds: xr.Dataset, *, gain: float = 3.5) -> np.ndarray:
    """(y, x, 3) float image in [0, 1] from the red/green/blue bands, NaN shown black."""
    missing = [b for b in RGB if b not in ds]
    if missing:
        raise ValueError(f"a quicklook needs bands {RGB}; missing {missing}")
    rgb = np.stack([np.asarray(ds[b].values, dtype="float32") for b in RGB], axis=-1)
    return np.clip(np.nan_to_num(rgb * gain, nan=0.0), 0, 1)


def save_quicklook(
    cloudy: xr.Dataset,
    restored: xr.Dataset,
    path: str | Path,
    *,
    truth: xr.Dataset | None = None,
    title: str = "",
) -> Path:
    """Save cloudy / restored / (truth) / confidence / gate panels of ONE date to a PNG."""
    plt = _pyplot()

    panels: list[tuple[str, np.ndarray, str | None]] = [
        ("cloudy input", rgb_image(cloudy), None),
        ("restored", rgb_image(restored), None),
    ]
    if truth is not None:
        panels.append(("truth", rgb_image(truth), None))
    panels.append(("confidence", np.asarray(restored["confidence"].values), "viridis"))
    if "gate" in restored:
        panels.append(("gate (physics weight)", np.asarray(restored["gate"].values), "magma"))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(3.6 * len(panels), 3.9), constrained_layout=True
    )
    for ax, (name, img, cmap) in zip(axes, panels, strict=True):
        if cmap is None:
            ax.imshow(img, interpolation="nearest")
        else:
            im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.7)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    return _save(fig, path, title)


#: Colours of the VLM prior's label roles in ``save_prior_labels`` (RGB 0..1).
_ROLE_COLOURS = {
    "clear": (0.20, 0.62, 0.25),
    "thin": (0.55, 0.80, 0.95),
    "thick": (0.95, 0.95, 0.95),
    "shadow": (0.25, 0.22, 0.45),
    "bright": (0.95, 0.75, 0.20),
}


def prior_label_layers(ds: xr.Dataset) -> list[str]:
    """Names of the VLM prior's per-label probability layers in a restored dataset/archive."""
    return [str(n) for n in ds.data_vars if str(n).startswith("prior_p_")]


def save_prior_labels(
    restored: xr.Dataset, path: str | Path, *, time_index: int = 0, title: str = ""
) -> Path:
    """PNG of the VLM prior's labels for one date: restored RGB, most likely label, its probability.

    The label map is the per-pixel most likely label of the stored probability layers
    (``prior_p_*``, region judgements interpolated between region centres), so each region
    shows as a patch of its label with soft borders between regions. Pixels without a
    judgement are black.
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    names = prior_label_layers(restored)
    if not names:
        raise ValueError(
            "no VLM prior layers (prior_p_*) in this dataset; fix: restore with --prior vlm "
            "(the physics prior stores none)"
        )
    ds = restored.isel(time=time_index)
    probs = np.stack([np.asarray(ds[n].values, dtype="float32") for n in names])
    known = np.isfinite(probs).all(axis=0)
    best = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=0)
    roles = _label_roles(restored, names)
    palette = np.array([_ROLE_COLOURS.get(r, (0.6, 0.6, 0.6)) for r in roles], dtype="float32")
    label_img = np.where(known[..., None], palette[best], 0.0)
    top = np.where(known, np.nanmax(np.where(known, probs, 0.0), axis=0), np.nan)

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 4.2), constrained_layout=True)
    axes[0].imshow(rgb_image(ds), interpolation="nearest")
    axes[0].set_title("restored", fontsize=10)
    axes[1].imshow(label_img, interpolation="nearest")
    axes[1].set_title("VLM label (most likely)", fontsize=10)
    handles = [
        Patch(color=palette[k], label=n.removeprefix("prior_p_").replace("_", " "))
        for k, n in enumerate(names)
    ]
    axes[1].legend(handles=handles, loc="lower left", fontsize=7, framealpha=0.8)
    im = axes[2].imshow(top, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title("its probability", fontsize=10)
    fig.colorbar(im, ax=axes[2], shrink=0.7)
    for ax in axes:
        ax.set_axis_off()
    return _save(fig, path, title)


def _label_roles(ds: xr.Dataset, names: list[str]) -> list[str]:
    """Role of each label layer, from the prior parameters recorded in the attributes."""
    import json

    try:
        labels = json.loads(ds.attrs.get("prior_params", "{}")).get("labels", [])
    except (TypeError, ValueError):
        labels = []
    by_layer = {"prior_p_" + "_".join(str(w).lower().split()): str(r) for w, r in labels}
    return [by_layer.get(n, "") for n in names]


def _pyplot():
    """matplotlib.pyplot on the Agg backend (files only: no display needed on a worker)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, title: str) -> Path:
    """Title, write ``fig`` to ``path`` (folders created) and free it."""
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def save_archive_quicklook(
    store: str | Path, path: str | Path, *, time_index: int = 0, max_size: int = 1024
) -> Path:
    """Restored RGB and confidence of one date of an archive, read from its overviews: the
    finest level at most ``max_size`` px wide (``pipeline.overviews.open_overview``), so a
    continental archive is browsed without reading full resolution."""
    from .overviews import open_overview

    plt = _pyplot()
    level = open_overview(store, max_size=max_size).isel(time=time_index).load()
    factor = int(level.attrs.get("overview_factor", 1))
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2), constrained_layout=True)
    axes[0].imshow(rgb_image(level), interpolation="nearest")
    axes[0].set_title(f"restored (1/{factor} resolution)", fontsize=10)
    im = axes[1].imshow(level["confidence"].values, cmap="viridis", vmin=0, vmax=1)
    axes[1].set_title("confidence", fontsize=10)
    fig.colorbar(im, ax=axes[1], shrink=0.7)
    for ax in axes:
        ax.set_axis_off()
    return _save(fig, path, "")

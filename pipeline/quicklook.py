"""Quicklook PNGs: cloudy input, restored output and confidence side by side."""

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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: list[tuple[str, np.ndarray, str | None]] = [
        ("cloudy input", rgb_image(cloudy), None),
        ("restored", rgb_image(restored), None),
    ]
    if truth is not None:
        panels.append(("truth", rgb_image(truth), None))
    panels.append(("confidence", np.asarray(restored["confidence"].values), "viridis"))
    if "gate" in restored:
        panels.append(("gate (physics weight)", np.asarray(restored["gate"].values), "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.9), constrained_layout=True)
    for ax, (name, img, cmap) in zip(axes, panels, strict=True):
        if cmap is None:
            ax.imshow(img, interpolation="nearest")
        else:
            im = ax.imshow(img, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.7)
        ax.set_title(name, fontsize=10)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

"""The quality benchmark's figure: per stack, cloudy / truth / each method, and error maps."""

from __future__ import annotations

from typing import Any

import numpy as np

RGB = ("B04", "B03", "B02")
STRETCH = 3.5  # reflectance x 3.5, then gamma 1/1.4: a common true-colour look for L2A
ERROR_MAX = 0.1  # mean absolute reflectance error shown at full colour


def _rgb(img: np.ndarray, bands: tuple[str, ...]) -> np.ndarray:
    idx = [bands.index(b) for b in RGB if b in bands]
    rgb = np.moveaxis(img[idx], 0, -1).astype("float64")
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0) * STRETCH, 0, 1) ** (1 / 1.4)
    return rgb


def draw_examples(examples: dict[str, dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_methods = max(len(e["outputs"]) for e in examples.values())
    ncols = 2 + n_methods
    nrows = 2 * len(examples)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(2.0 * ncols, 1.6 * nrows), squeeze=False, layout="constrained"
    )
    for r, (name, ex) in enumerate(examples.items()):
        stack, sim = ex["stack"], ex["sim"]
        top, bottom = axes[2 * r], axes[2 * r + 1]
        top[0].imshow(_rgb(ex["cloudy"][stack.target], stack.bands))
        top[0].set_title(f"cloudy ({sim.kind} {sim.cover:.0%})", fontsize=7)
        top[1].imshow(_rgb(ex["truth"], stack.bands))
        top[1].set_title("truth", fontsize=7)
        mask = np.zeros(sim.thin.shape + (3,))
        mask[..., 0], mask[..., 1], mask[..., 2] = sim.thick, sim.thin, sim.shadow
        bottom[0].imshow(mask)
        bottom[0].set_title("thick R / thin G / shadow B", fontsize=7)
        bottom[1].axis("off")
        for c, (method, est) in enumerate(ex["outputs"].items(), start=2):
            top[c].imshow(_rgb(est, stack.bands))
            top[c].set_title(method, fontsize=7)
            diff = np.abs(np.clip(est, 0, 1) - np.clip(ex["truth"], 0, 1))
            err = np.where(np.isfinite(diff).all(axis=0), np.nan_to_num(diff).mean(axis=0), np.nan)
            im = bottom[c].imshow(err, cmap="magma", vmin=0, vmax=ERROR_MAX)
            bottom[c].set_title("|error|", fontsize=7)
        for ax in (*top, *bottom):
            ax.set_xticks([])
            ax.set_yticks([])
        top[0].set_ylabel(name, fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.4, label="mean |error| (reflectance)")
    fig.savefig(path, dpi=110)
    plt.close(fig)

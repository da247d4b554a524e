"""The offline demo end to end (through the CLI), and the analyst notebook executed on its output."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.cli import EXIT_EXISTS, EXIT_OK, main

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "explore_archive.ipynb"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    args = [
        "-q",
        "demo",
        "--output",
        str(out),
        "--size",
        "160",
        "--dates",
        "6",
        "--chunk-size",
        "96",
        "--overview-min-size",
        "64",
    ]
    return out, args


@pytest.mark.slow
def test_demo_end_to_end_then_notebook(demo_run, capsys):
    out, args = demo_run
    assert main(args) == EXIT_OK
    printed = capsys.readouterr().out
    # The accuracy table, with every pixel class, and where things are.
    for word in (
        "Restored vs truth",
        "clear",
        "thin",
        "thick",
        "shadow",
        "psnr",
        "restored.zarr",
        "quicklook.png",
    ):
        assert word in printed, word
    # The summary names the STAC collection, the overview levels and the store's objects.
    assert f"STAC collection  {out / 'restored.stac' / 'collection.json'}" in printed
    assert "overviews        1/2, 1/4" in printed  # 160 px -> 80 -> 40 (fits 64)
    objects = int(printed.split("objects ")[1].split()[0])
    assert objects == sum(1 for p in (out / "restored.zarr").rglob("*") if p.is_file())
    store = out / "restored.zarr"
    png = out / "quicklook.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ds = xr.open_zarr(store, decode_coords="all")
    assert ds.rio.crs is not None and ds.rio.crs.is_projected
    assert ds.sizes["time"] == 6 and ds.sizes["y"] == 160 and ds.sizes["x"] == 160
    gate = ds["gate"].values
    assert np.nanmin(gate) >= 0 and np.nanmax(gate) <= 1
    assert ds.attrs["prior"] == "physics+stack"  # the default: physics + the stack's evidence
    # The per-pixel error layer, and the estimate printed beside the truth.
    assert "error_estimate" in ds and "Self-validation estimate" in printed
    assert "within the nominal 90 % interval" in printed

    # Restoration beats the cloudy input on the whole stack (PSNR line of the 'all' row).
    tables = printed.split("Restored vs truth")
    psnr_input = float(tables[0].split("\nall")[1].split()[1])
    psnr_restored = float(tables[1].split("\nall")[1].split()[1])
    assert psnr_restored > psnr_input + 3, (psnr_input, psnr_restored)

    # A second demo into the same folder is refused without --overwrite.
    assert main(args) == EXIT_EXISTS

    # The analyst notebook runs top to bottom on this archive.
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    env_before = os.environ.get("PHYVLM_STORE")
    os.environ["PHYVLM_STORE"] = str(store)
    try:
        NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        ).execute()
    finally:
        if env_before is None:
            os.environ.pop("PHYVLM_STORE", None)
        else:
            os.environ["PHYVLM_STORE"] = env_before
    images = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert len(images) >= 2

"""Nothing heavy in the client: a tiled run's output schema comes from its configuration, and
its models load on the workers only.

The run with the VLM prior goes in a fresh Python process (the client), so that what the
client imported, loaded and how big it grew are its own and not this test process's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from flows.run import RunConfig
from flows.steps import error_layer_step, restore_step, wants_error_layer
from flows.tiled import output_schema
from pipeline.catalog import SearchParams
from pipeline.cube import CubeConfig
from pipeline.validation import ValidationConfig

REPO = Path(__file__).resolve().parents[1]
BANDS = ("B02", "B03", "B04", "B08")


def _restored_like_a_tile(config: RunConfig) -> xr.Dataset:
    """What a tile restores for ``config``, on a tiny in-memory cube (the oracle)."""
    rng = np.random.default_rng(0)
    shape = (2, 16, 16)
    coords = {
        "time": pd.DatetimeIndex(["2024-05-01", "2024-05-11"]),
        "y": 5_000_000.0 - 10.0 * np.arange(16),
        "x": 500_000.0 + 10.0 * np.arange(16),
    }
    data = {b: (("time", "y", "x"), rng.uniform(0.03, 0.3, shape).astype("float32")) for b in BANDS}
    data["SCL"] = (("time", "y", "x"), np.full(shape, 4, dtype="uint8"))
    out = restore_step(xr.Dataset(data, coords=coords), config)
    return error_layer_step(out, None) if wants_error_layer(config) else out


@pytest.mark.parametrize(
    "mode, period, validate",
    [("dates", None, True), ("dates", None, False), ("composite", None, False)],
)
def test_the_schema_from_the_configuration_matches_a_restore(tmp_path, mode, period, validate):
    config = RunConfig(
        search=SearchParams(bbox=(13.0, 52.0, 13.1, 52.1), datetime="2024-05-01/2024-05-30"),
        output=str(tmp_path / "x.zarr"),
        cube=CubeConfig(bands=BANDS),
        mode=mode,
        period=period,
        validation=ValidationConfig(enabled=validate),
    )
    schema = output_schema(config)
    restored = _restored_like_a_tile(config)
    expected = {
        str(n): (v.dtype, dict(v.attrs))
        for n, v in restored.data_vars.items()
        if set(v.dims) == {"time", "y", "x"}
    }
    assert list(schema.variables) == list(expected)
    assert schema.variables == expected
    for key in ("prior", "prior_params", "fusion_params"):
        assert schema.attrs[key] == restored.attrs[key]


CLIENT = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path

    from distributed import Client, LocalCluster

    from flows.run import RunConfig
    from flows.tiled import run_tiled
    from pipeline.archive import ArchiveConfig
    from pipeline.catalog import SearchParams
    from pipeline.cube import CubeConfig
    from pipeline.tiling import TilingConfig
    from pipeline.validation import ValidationConfig

    catalog, model, store, bbox = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    config = RunConfig(
        search=SearchParams(bbox=tuple(bbox), datetime="2024-03-01/2024-04-30", catalog=catalog),
        output=store,
        cube=CubeConfig(bands=("B02", "B03", "B04", "B08"), chunk_size=64),
        archive=ArchiveConfig(chunk_size=64),
        tiling=TilingConfig(tile_size=64, tiles_in_flight=2),
        prior="vlm",
        prior_options={"model": model, "region_px": 16, "quicklook_px": 56, "batch_size": 8},
        validation=ValidationConfig(enabled=False),
        overviews=False,
        stac=False,
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster) as c:
        summary = run_tiled(config, progress=False, client=c)

        def loads():
            from pipeline.priors._vlm_model import load_events
            return len(load_events())

        worker_loads = sum(c.run(loads).values())
    from pipeline.priors._vlm_model import load_events
    print(json.dumps({
        "written": summary.tiles.written,
        "failed": summary.tiles.failed,
        "client_loads": len(load_events()),
        "worker_loads": worker_loads,
        "transformers_in_client": "transformers" in sys.modules,
        "rss_before_kib": before,
        "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }))
    """
)


@pytest.mark.slow
def test_a_vlm_run_loads_the_model_on_the_workers_only(tmp_path):
    from pipeline.synthetic import make_stack, write_stac_items
    from tests.test_tiled_run import AREA, ORIGIN, SIZE
    from tests.tiny_vlm import build_tiny_vlm

    catalog = tmp_path / "catalog"
    stack = make_stack((3, SIZE, SIZE), bands=BANDS, origin=ORIGIN, start="2024-03-11", seed=3)
    write_stac_items(stack, catalog)
    model = build_tiny_vlm("qwen2_vl", tmp_path / "model")
    model_bytes = sum(f.stat().st_size for f in Path(model).rglob("*") if f.is_file())
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [str(catalog), str(model), str(tmp_path / "out.zarr"), json.dumps(list(AREA))]
    done = subprocess.run(
        [sys.executable, "-c", CLIENT, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print("client of a --prior vlm tiled run:", report, "model bytes:", model_bytes)
    assert report["written"] == 4 and not report["failed"]
    assert report["worker_loads"] >= 1  # the model was used, on the worker
    # ... and never in the client: no load, not even the library that would load it, so its
    # memory cannot hold the weights (the schema and scene state came from elsewhere)
    assert report["client_loads"] == 0
    assert report["transformers_in_client"] is False
    grew = (report["rss_peak_kib"] - report["rss_before_kib"]) * 1024
    assert grew < model_bytes, (grew, model_bytes)

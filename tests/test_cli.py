"""The phyvlm-cr command through its entry point: help, errors and exit codes, search, run."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from flows.cli import (
    EXIT_EXISTS,
    EXIT_NOTHING_FOUND,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    main,
)

from .real_fixtures import AUSTRIA_BANDS, write_austria_items

ENTRY_POINT = Path(sys.executable).with_name("phyvlm-cr")
# Just around the real crop (13.100-13.179 E, 48.274-48.310 N): a larger box would only add NaN.
AUSTRIA_BBOX = "13.1,48.274,13.18,48.31"
AUSTRIA_DATES = "2021-06-01/2021-10-01"


@pytest.fixture(scope="module")
def austria_catalog(tmp_path_factory):
    from .conftest import shared_data

    tif = shared_data("pc-l2a-austria-2dates", "inference-img.tif")
    out = tmp_path_factory.mktemp("austria-catalog")
    write_austria_items(tif, shared_data("pc-stac-items"), out)
    return out


def test_entry_point_help_lists_subcommands():
    assert ENTRY_POINT.exists(), "the console script is not installed: pip install -e ."
    proc = subprocess.run([str(ENTRY_POINT), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for sub in ("search", "run", "demo"):
        assert sub in proc.stdout
    proc = subprocess.run(
        [str(ENTRY_POINT), "run", "--help"], capture_output=True, text=True, timeout=120
    )
    assert "--resume" in proc.stdout and "--scheduler" in proc.stdout and "--bands" in proc.stdout


def test_invalid_bbox_is_a_usage_error(capsys, pc_items_dir):
    code = main(
        [
            "search",
            "--bbox",
            "20,10,10,20",
            "--datetime",
            AUSTRIA_DATES,
            "--catalog",
            str(pc_items_dir),
        ]
    )
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "bbox" in err and "west" in err


def test_malformed_bbox_exits_2_from_argparse(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["search", "--bbox", "1,2,3", "--datetime", AUSTRIA_DATES])
    assert exc.value.code == 2
    assert "4 numbers" in capsys.readouterr().err


def test_reversed_dates_is_a_usage_error(capsys, pc_items_dir):
    code = main(
        [
            "search",
            "--bbox",
            AUSTRIA_BBOX,
            "--datetime",
            "2021-10-01/2021-06-01",
            "--catalog",
            str(pc_items_dir),
        ]
    )
    assert code == EXIT_USAGE
    assert "2021-10-01" in capsys.readouterr().err


def test_nothing_found_exit_code(capsys, pc_items_dir):
    code = main(
        [
            "search",
            "--bbox=-10,-10,-9,-9",
            "--datetime",
            "2019-01-01/2019-01-02",
            "--catalog",
            str(pc_items_dir),
        ]
    )
    assert code == EXIT_NOTHING_FOUND
    assert "error:" in capsys.readouterr().err


def test_unreachable_api_exit_code(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at the end of the block: nobody listens
    code = main(
        [
            "search",
            "--bbox",
            AUSTRIA_BBOX,
            "--datetime",
            AUSTRIA_DATES,
            "--catalog",
            f"http://127.0.0.1:{port}/api",
        ]
    )
    assert code == EXIT_UNREACHABLE
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


def test_search_prints_a_table_of_real_items(capsys, pc_items_dir):
    code = main(
        [
            "search",
            "--bbox=-180,-90,180,90",
            "--datetime",
            "2024-04-19/2024-04-19",
            "--catalog",
            str(pc_items_dir),
        ]
    )
    assert code == EXIT_OK
    out = capsys.readouterr().out
    for tile in ("47XML", "47XMJ", "46XES", "46XER"):
        assert tile in out
    assert "4 item(s)" in out


def _run_args(catalog: Path, output: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "run",
        "--bbox",
        AUSTRIA_BBOX,
        "--datetime",
        AUSTRIA_DATES,
        "--catalog",
        str(catalog),
        "--bands",
        ",".join(AUSTRIA_BANDS),
        "--no-scl",
        "--output",
        str(output),
        "--chunk-size",
        "256",
        "--workers",
        "2",
        "--threads",
        "1",
        "--dashboard",
        "127.0.0.1:0",
        *extra,
    ]


@pytest.mark.slow
def test_run_on_real_data_writes_an_archive_and_refuses_to_overwrite(
    austria_catalog, tmp_path, capsys
):
    store = tmp_path / "austria.zarr"
    assert main(_run_args(austria_catalog, store, "--zarr-format", "2")) == EXIT_OK
    out = capsys.readouterr().out
    assert str(store) in out and "read failures    0" in out

    ds = xr.open_zarr(store, decode_coords="all")
    assert ds.rio.crs.to_epsg() == 32633
    assert ds.sizes["time"] == 2
    for name in (
        *AUSTRIA_BANDS,
        "confidence",
        "gate",
        "transmission",
        "reference_days",
        "no_valid_observation",
    ):
        assert name in ds, name
    conf = ds["confidence"].values
    assert np.nanmin(conf) >= 0 and np.nanmax(conf) <= 1
    assert len(ds.attrs["item_ids"]) == 2 and ds.attrs["search_datetime"] == AUSTRIA_DATES
    # Both dates are clear: restoration must keep the real reflectance nearly unchanged.
    from pipeline.catalog import SearchParams, search
    from pipeline.cube import CubeConfig, load_cube

    items = search(
        SearchParams(
            bbox=(13.1, 48.274, 13.18, 48.31), datetime=AUSTRIA_DATES, catalog=str(austria_catalog)
        )
    )
    cube = load_cube(
        items, CubeConfig(bands=AUSTRIA_BANDS, include_scl=False), geobox=ds.odc.geobox
    ).compute()
    diff = np.abs(ds["B04"].values - cube["B04"].values)
    assert np.nanmedian(diff) < 0.01

    before = ds["B04"].values.copy()
    assert main(_run_args(austria_catalog, store)) == EXIT_EXISTS
    assert "--resume" in capsys.readouterr().err
    np.testing.assert_array_equal(xr.open_zarr(store, decode_coords="all")["B04"].values, before)


@pytest.mark.slow
def test_missing_asset_is_reported(austria_catalog, tmp_path, capsys):
    args = _run_args(austria_catalog, tmp_path / "x.zarr")
    args[args.index("--bands") + 1] = "B04,B11"
    code = main(args)
    assert code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "B11" in err and "--bands" in err
    assert not (tmp_path / "x.zarr").exists()


@pytest.mark.slow
def test_composite_mode_writes_one_step_per_period(austria_catalog, tmp_path, capsys):
    store = tmp_path / "composite.zarr"
    assert (
        main(_run_args(austria_catalog, store, "--mode", "composite", "--period", "QS")) == EXIT_OK
    )
    ds = xr.open_zarr(store, decode_coords="all")
    # 2021-06-17 and 2021-09-25 fall in two quarters (Q2, Q3).
    assert [str(t)[:10] for t in ds.time.values] == ["2021-04-01", "2021-07-01"]
    assert {"confidence", "no_valid_observation", "observation_count"} <= set(ds.data_vars)
    assert ds.attrs["mode"] == "composite" and ds.attrs["period"] == "QS"
    assert ds.rio.crs.to_epsg() == 32633

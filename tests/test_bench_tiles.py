"""``phyvlm-cr benchmark tiles``: peak memory per worker as the tiled area grows (smoke run)."""

from __future__ import annotations

import json

import pytest

from flows.cli import main


@pytest.mark.slow
def test_tiles_benchmark_reports_worker_peaks_per_area(tmp_path, capsys):
    code = main(
        [
            "-q",
            "benchmark",
            "tiles",
            "--tile-size",
            "128",
            "--chunk-size",
            "64",
            "--grids",
            "1,2",
            "--dates",
            "2",
            "--output",
            str(tmp_path),
        ]
    )
    assert code == 0
    report = json.loads((tmp_path / "tiles.json").read_text())
    runs = report["runs"]
    assert [r["tiles"] for r in runs] == [1, 4]
    for r in runs:
        assert r["failed"] == 0
        assert len(r["worker_peak_mib"]) == 2  # every worker sampled
        # a peak is at least the idle footprint of the same worker
        for addr, peak in r["worker_peak_mib"].items():
            assert peak >= r["worker_idle_mib"][addr] > 0
    printed = capsys.readouterr().out
    assert "max worker peak MiB" in printed

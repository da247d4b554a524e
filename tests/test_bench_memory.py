"""``phyvlm-cr benchmark memory``: peak memory per worker as the dates grow (smoke run)."""

from __future__ import annotations

import json

import pytest

from flows.cli import main
from pipeline.bench._dates_sweep import CatalogSpec, calculator_figures, read_year_catalog


@pytest.mark.slow
def test_memory_benchmark_reports_worker_peaks_per_date_count(tmp_path, capsys):
    argv = [
        "-q",
        "benchmark",
        "memory",
        "--dates",
        "3,6",
        "--size",
        "64",
        "--chunk-size",
        "64",
        "--composite-size",
        "64",
        "--composite-chunk-size",
        "64",
        "--bands",
        "4",
        "--workdir",
        str(tmp_path),
    ]
    code = main(argv)
    report = json.loads((tmp_path / "memory.json").read_text())
    sweep = report["sweep"]
    assert [r["dates"] for r in sweep] == [3, 6]
    for r in sweep:
        assert r["output_steps"] == r["dates"]  # every date restored
        assert r["read_failures"] == 0
        assert len(r["worker_peak_mib"]) == 2  # every worker sampled
        for addr, peak in r["worker_peak_mib"].items():
            assert peak >= r["worker_idle_mib"][addr] > 0
        assert r["calculator_worker_mib"] > 0 and r["task_dates"] <= r["dates"]
    assert sweep[0]["ratio"] == 1.0
    assert sweep[1]["ratio"] == pytest.approx(
        sweep[1]["max_worker_peak_mib"] / sweep[0]["max_worker_peak_mib"], abs=0.01
    )
    composite = report["composite"]
    assert composite["finished"] and composite["mode"] == "composite"
    assert composite["output_steps"] == 1  # 6 dates 2.5 days apart: one month
    targets = report["targets"]
    assert set(targets) == {"flat", "composite_finished"}
    assert targets["composite_finished"]["passed"]
    assert code == (0 if all(t["passed"] for t in targets.values()) else 1)
    printed = capsys.readouterr().out
    assert "peak worker MiB" in printed and "target flat:" in printed

    # the catalog is written once: a second read of the work folder finds the same items
    spec = CatalogSpec(size=64, dates=6, bands=("B02", "B03", "B04", "B08"))
    items = read_year_catalog(spec.folder(tmp_path) / "items.json")
    assert len(items) == 6
    assert [it.datetime for it in items] == sorted(it.datetime for it in items)


def test_calculator_figures_follow_the_time_block_not_the_dates():
    """With a time window a task holds block + 2 x window dates however long the series."""
    common = dict(
        area=256,
        chunk_size=256,
        bands=10,
        halo=33,
        window_dates=2,
        time_block=5,
        threads_per_worker=1,
        worker_baseline_bytes=300 * 2**20,
    )
    short, year = (calculator_figures(dates=t, **common) for t in (12, 146))
    assert short["task_dates"] == year["task_dates"] == 9
    assert short == year
    unbounded = calculator_figures(dates=146, **{**common, "window_dates": None})
    assert unbounded["task_dates"] == 146
    assert unbounded["calculator_worker_mib"] > 10 * year["calculator_worker_mib"] / 2


def test_memory_benchmark_refuses_bad_date_counts(tmp_path, capsys):
    from flows.cli import EXIT_USAGE

    code = main(["-q", "benchmark", "memory", "--dates", "1", "--workdir", str(tmp_path)])
    assert code == EXIT_USAGE
    assert "--dates '1': each run needs at least 2 dates" in capsys.readouterr().err
    assert not (tmp_path / "memory.json").exists()

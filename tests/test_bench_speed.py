"""The speed benchmark end to end on a tiny stack (through the CLI), and the memory calculator.

No speed is asserted here: the figures are the benchmark's output, checked for presence and
sanity only. The calculator is checked against values computed by hand from its documented
table, and against the kernel's real heap peak (tracemalloc, deterministic, not timed).
"""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import pytest

from flows.cli import EXIT_OK, main
from pipeline.bench.memory import KERNEL_LAYERS_FIXED, KERNEL_LAYERS_PER_BAND, estimate_memory
from pipeline.bench.speed import PARTS, SpeedConfig, check_memory

TINY = ["--dates", "3", "--bands", "4", "--size", "64", "--chunk-size", "64", "--kernel-size", "64"]


def _numbers(node, path="") -> list[tuple[str, float]]:
    """Every int/float leaf of a JSON tree with its path (bools and strings skipped)."""
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _numbers(v, f"{path}.{k}")]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in _numbers(v, f"{path}[{i}]")]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return [(path, float(node))]
    return []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(["-q", "benchmark", "speed", *TINY, "--output", str(out)])
    return code, out, buffer.getvalue()


@pytest.mark.slow
def test_cli_runs_every_part_and_writes_finite_figures(tiny_run):
    code, out, printed = tiny_run
    assert code == EXIT_OK
    report = json.loads((out / "speed.json").read_text())
    sections = ("kernel", "end_to_end", "peers", "memory", "scaling", "harmonisation")
    for section in (*sections, "machine", "config"):
        assert section in report, f"speed.json lacks {section}"
    assert report["config"]["parts"] == list(PARTS)

    numbers = _numbers({k: report[k] for k in sections})
    assert len(numbers) > 40
    bad = [(p, v) for p, v in numbers if not math.isfinite(v)]
    assert not bad, f"non-finite figures: {bad}"

    k = report["kernel"]
    assert (k["dates"], k["bands"], k["height_px"], k["width_px"]) == (3, 4, 64, 64)
    for key in ("output_mpx_per_s_per_core", "input_values_per_s", "seconds", "memory_crop_ratio"):
        assert k[key] > 0, key
    assert k["input_values_per_s"] == pytest.approx(k["output_mpx_per_s_per_core"] * 1e6 * 4)
    assert k["threads"]["OMP_NUM_THREADS"] == "1"  # the kernel ran pinned to one thread
    assert k["restored_finite_fraction"] > 0.5

    runs = {(r["workers"], r["area_px"]) for r in report["end_to_end"]}
    assert runs == {(1, 64), (2, 32), (2, 64)}  # scaling at the full area, memory at two areas
    for r in report["end_to_end"]:
        assert r["end_to_end_over_load"] == pytest.approx(
            r["end_to_end_seconds"] / r["load_seconds"]
        )
    peers = report["peers"]
    assert peers["end_to_end_over_geomedian"] == pytest.approx(
        peers["end_to_end_seconds"] / peers["geomedian_seconds"]
    )
    assert [m["area_px"] for m in report["memory"]] == [32, 64]
    for m in report["memory"]:
        assert m["measured_peak_worker_rss_bytes"] >= m["worker_idle_rss_bytes"] > 50 * 2**20
        assert m["predicted_worker_bytes"] > m["worker_idle_rss_bytes"]
    scaling = report["scaling"]
    assert set(scaling["end_to_end_seconds_by_workers"]) == {"1", "2"}
    assert scaling["speedup"] == pytest.approx(
        scaling["end_to_end_seconds_by_workers"]["1"]
        / scaling["end_to_end_seconds_by_workers"]["2"]
    )

    h = report["harmonisation"]
    assert (h["bands"], h["height_px"], h["width_px"]) == (4, 64, 64)
    runs = {(r["backend"], r["device"], r["grid_step"]): r for r in h["runs"]}
    assert set(runs) >= {("numba", "cpu", 8), ("numba", "cpu", 1), ("torch", "cpu", 8)}
    for r in runs.values():
        assert r["output_mpx_per_s"] == pytest.approx(64 * 64 / 1e6 / r["seconds"])
        assert r["max_abs_gain_difference_to_numba"] <= 1e-5  # the same maps (float32)
    assert h["torch_cpu_over_numba_by_grid_step"]["8"] == pytest.approx(
        runs[("numba", "cpu", 8)]["seconds"] / runs[("torch", "cpu", 8)]["seconds"]
    )
    assert {r["backend"] for r in h["restore"]} == {"numba", "torch"}
    assert h["threads"]["OMP_NUM_THREADS"] == "1"

    machine = report["machine"]
    assert machine["logical_cores"] >= 1 and machine["ram_bytes"] > 0 and machine["cpu_model"]
    for package in ("numpy", "dask", "torch", "numba"):
        assert machine["versions"][package], package
    assert machine["timestamp"].endswith("Z")

    # the printed table carries the same figures
    for title in (
        "Restoration kernel",
        "End to end",
        "Peers",
        "Peak memory",
        "Scaling",
        "Local harmonisation alone",
        "torch-CPU / numba speed, grid step 8",
    ):
        assert title in printed
    assert f"{k['output_mpx_per_s_per_core']:10.3f}".strip() in printed
    assert f"{scaling['speedup']:.2f}" in printed
    # the work folder (COGs, items, stores) is removed unless --keep-data
    assert [p.name for p in Path(out).iterdir()] == ["speed.json"]


def test_memory_calculator_hand_computed():
    # chunk 100 px, halo 10 -> block 120 px; T = 2 -> P = 2 * 120 * 120 * 4 = 115_200 bytes,
    # P0 = 2 * 100 * 100 * 4 = 80_000 bytes, L = 2 P / T = P. B = 3 with SCL, C = min(4, T - 1)
    # = 1: block layers 6 * 3 + 33.75 = 51.75 P, one date's working set
    # 3 * 3 + 1 * 1 + 10 = 20 L = 20 P -> 71.75 layers.
    est = estimate_memory(100, 2, 3, halo=10, threads_per_worker=2, worker_baseline_bytes=1000)
    assert est.kernel_layers == 71.75
    assert est.input_block_bytes == 4 * 115_200
    assert est.task_bytes == 8_265_600  # 71.75 * 115_200
    assert est.staging_bytes == 1_120_000  # (3 + 1) * 80_000 input + (3 + 7) * 80_000 output
    assert est.worker_bytes == 1000 + 2 * (8_265_600 + 1_120_000)

    no_scl = estimate_memory(100, 2, 3, halo=10, has_scl=False, worker_baseline_bytes=0)
    assert no_scl.task_bytes == 8_150_400  # 70.75 * 115_200
    assert no_scl.worker_bytes == 8_150_400 + 1_040_000  # one thread, staging (3 + 10) * 80_000
    assert KERNEL_LAYERS_PER_BAND == 6 and KERNEL_LAYERS_FIXED == 33.75
    # T = 12, B = 10, 4 candidates: 93.75 P + (30 + 4 + 10) L * 2 / 12
    assert estimate_memory(1024, 12, 10, halo=0).kernel_layers == 93.75 + 44 / 6


def test_memory_calculator_rejects_bad_sizes():
    with pytest.raises(ValueError, match="chunk_size"):
        estimate_memory(0, 12, 10, halo=0)
    with pytest.raises(ValueError, match="halo"):
        estimate_memory(512, 12, 10, halo=-1)
    with pytest.raises(ValueError, match="candidates"):
        estimate_memory(512, 12, 10, halo=0, candidates=0)


def test_memory_calculator_matches_the_kernels_heap_peak():
    """The documented temporaries count against numpy's real allocations in ``restore``.

    When this fails after a kernel change, recount the kernel's temporaries and update
    KERNEL_LAYERS_* and the table in pipeline/bench/memory.py.
    """
    import pipeline
    from pipeline.bench.speed import BAND_ORDER
    from pipeline.synthetic import make_stack

    size, dates, bands = 160, 6, BAND_ORDER[:4]
    cube = make_stack((dates, size, size), bands=bands, seed=1).observed
    pipeline.restore(cube)  # first call: imports and caches stay out of the count
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        pipeline.restore(cube)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    predicted = estimate_memory(size, dates, len(bands), halo=0).task_bytes
    assert 0.85 < peak / predicted < 1.15, (peak, predicted)


def test_config_and_memory_guard_name_the_fix():
    with pytest.raises(ValueError, match="choose from kernel"):
        SpeedConfig(parts=("kernel", "throughput"))
    assert not SpeedConfig(parts=("kernel", "harmonisation")).cluster_parts  # no cluster
    with pytest.raises(ValueError, match="two worker counts"):
        SpeedConfig(workers=(2,), parts=("scaling",))
    with pytest.raises(ValueError, match="too small"):
        SpeedConfig(size=32)
    with pytest.raises(ValueError, match="--kernel-size 1024"):
        check_memory(SpeedConfig(kernel_size=2048, parts=("kernel",)), available_bytes=16 * 2**30)
    with pytest.raises(ValueError, match="--chunk-size"):
        check_memory(SpeedConfig(chunk_size=2048, size=2048, parts=("end_to_end",)), 4 * 2**30)
    check_memory(SpeedConfig(kernel_size=64, size=64, chunk_size=64), available_bytes=4 * 2**30)


def test_cli_lists_speed_and_reports_bad_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["benchmark", "speed", "--help"])
    assert exc.value.code == 0
    assert "--kernel-size" in capsys.readouterr().out
    assert main(["-q", "benchmark", "speed", "--parts", "nonsense"]) == 2
    assert "choose from" in capsys.readouterr().err


def test_effective_halo_follows_map_overlap_padding():
    from pipeline.bench.memory import effective_halo

    assert effective_halo(256, 256, 36) == 0.0  # one chunk: nothing to overlap with
    assert effective_halo(512, 256, 36) == 18.0  # two chunks: one padded side each
    assert effective_halo(1024, 256, 36) == 36.0  # an interior chunk is padded on both sides

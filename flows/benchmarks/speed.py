"""``phyvlm-cr benchmark speed``: kernel throughput, end to end vs the I/O floor, peers, memory.

The measurements live in ``pipeline.bench.speed``; this module only maps flags to its config.
"""

from __future__ import annotations

import argparse

HELP = "restoration speed and memory vs the odc-stac load and the peers (median, geomedian)"
DESCRIPTION = (
    "Generate one synthetic stack (COGs + STAC items) and measure, in one run: the restoration "
    "kernel's throughput on one chunk in memory (output megapixels per second per core, input "
    "values per second); local COGs -> Zarr end to end against odc-stac loading the cube alone; "
    "a SCL-masked median and odc-algo's geomedian on the same cube; each worker's peak memory "
    "against the memory calculator at two areas; 1 -> 2 worker scaling; and the local "
    "harmonisation alone per backend (numba, torch on one CPU thread, torch on CUDA where "
    "present; '--parts harmonisation' runs it alone in about a minute). Prints a table and "
    "writes speed.json into --output. Defaults: T=12, B=10, the kernel timed on one 1024 px chunk, "
    "a 1024 px end-to-end area in 512 px chunks, 1 and 2 workers; with today's kernels this "
    "takes about 8 minutes and 6 GiB of RAM on the 2-core reference machine. The issue's "
    "2048 px chunk needs about 17 GiB in one process (pipeline.bench.memory); the run refuses "
    "what does not fit and names the size that does; '--size 4096 --chunk-size 2048 --kernel-size 2048' is the full "
    "setting for a big machine. '--dates 3 --bands 4 --size 64 "
    "--chunk-size 64 --kernel-size 64' is a smoke test of a few seconds."
)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one integer, e.g. 1,2")
    return values


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.bench.speed import PARTS, SpeedConfig

    d = SpeedConfig()
    p.add_argument("--dates", type=int, default=d.dates, help="dates T (default %(default)s)")
    p.add_argument(
        "--bands", type=int, default=d.bands, help="bands B, 1..12 (default %(default)s)"
    )
    p.add_argument(
        "--kernel-size",
        type=int,
        default=d.kernel_size,
        metavar="PX",
        help="side of the chunk the kernel is timed on (default %(default)s)",
    )
    p.add_argument(
        "--size",
        type=int,
        default=d.size,
        metavar="PX",
        help="side of the end-to-end area; the memory part also runs half of it (default %(default)s)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=d.chunk_size,
        metavar="PX",
        help="spatial chunk of cube and archive in the cluster runs (default %(default)s)",
    )
    p.add_argument(
        "--workers",
        type=_ints,
        default=d.workers,
        metavar="N,M",
        help="worker-process counts, one thread each (default %(default)s)",
    )
    p.add_argument(
        "--threads", type=int, default=d.threads_per_worker, help="threads per worker (default 1)"
    )
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the synthetic stack")
    p.add_argument(
        "--parts",
        type=_words,
        default=d.parts,
        help=f"comma-separated subset of {','.join(PARTS)} (default: all)",
    )
    p.add_argument("--keep-data", action="store_true", help="keep the COGs, items and Zarr stores")
    p.add_argument(
        "--output", "-o", default="benchmark-speed", metavar="DIR", help="folder for speed.json"
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.bench.speed import SpeedConfig, run_speed_benchmark

    config = SpeedConfig(
        dates=args.dates,
        bands=args.bands,
        kernel_size=args.kernel_size,
        size=args.size,
        chunk_size=args.chunk_size,
        workers=args.workers,
        threads_per_worker=args.threads,
        seed=args.seed,
        parts=args.parts,
        keep_data=args.keep_data,
    )
    report = run_speed_benchmark(config, output_dir=args.output, progress=not args.quiet)
    print(report.table())
    return 0

"""``phyvlm-cr benchmark prior``: what the VLM prior costs, measured, and GPU-hours for a job.

The measuring lives in ``pipeline.bench.prior_cost``; this module maps flags to its config,
prints the figures and writes them as JSON.
"""

from __future__ import annotations

import argparse

HELP = "VLM prior cost: crops/s, s/megapixel, GPU-hours for an area and number of dates"
DESCRIPTION = (
    "Load a Qwen VL checkpoint (--vlm-model; default a tiny random Qwen2-VL built offline, which "
    "measures only the pipeline's overhead), time the prior's batched label scoring on a "
    "synthetic block on this machine (its GPU if it has one), and print crops per second, "
    "seconds per megapixel and the hours for --area-km2 x --dates, counting the regions the "
    "chunk halo scores twice. GPU-hours use the measured throughput, or --gpu-crops-per-s "
    "when the GPU's figure is known. Writes prior_cost.json into --output."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.bench.prior_cost import PriorCostConfig

    d = PriorCostConfig()
    p.add_argument(
        "--vlm-model",
        default=None,
        metavar="PATH_OR_ID",
        help="checkpoint to measure (default: tiny random Qwen2-VL, overhead only)",
    )
    p.add_argument(
        "--crops", type=int, default=d.crops, help="crops in the timed block (default %(default)s)"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=d.repeats,
        help="timed passes, median reported (default %(default)s)",
    )
    p.add_argument(
        "--region-px",
        type=int,
        default=d.region_px,
        help="region side in output px (default %(default)s)",
    )
    p.add_argument(
        "--quicklook-px",
        type=int,
        default=d.quicklook_px,
        help="crop side the model sees (default %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="crops per forward pass (default %(default)s)",
    )
    p.add_argument("--device", default=d.device, help="auto (default), cpu, cuda")
    p.add_argument(
        "--area-km2",
        type=float,
        default=d.area_km2,
        help="area of the job to estimate (default %(default)s)",
    )
    p.add_argument(
        "--dates", type=int, default=d.dates, help="dates of the job (default %(default)s)"
    )
    p.add_argument(
        "--resolution",
        type=float,
        default=d.resolution_m,
        help="output pixel size, m (default %(default)s)",
    )
    p.add_argument(
        "--chunk-size",
        type=int,
        default=d.chunk_px,
        help="spatial chunk of the job, px (default %(default)s)",
    )
    p.add_argument(
        "--gpu-crops-per-s",
        type=float,
        default=None,
        help="assumed GPU throughput for the GPU-hours (default: the measured one)",
    )
    p.add_argument(
        "--output",
        "-o",
        default="benchmark-prior",
        metavar="DIR",
        help="folder for prior_cost.json",
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.bench.prior_cost import PriorCostConfig, measure_prior_cost, write_report

    config = PriorCostConfig(
        model=args.vlm_model,
        crops=args.crops,
        repeats=args.repeats,
        region_px=args.region_px,
        quicklook_px=args.quicklook_px,
        batch_size=args.batch_size,
        device=args.device,
        area_km2=args.area_km2,
        dates=args.dates,
        resolution_m=args.resolution,
        chunk_px=args.chunk_size,
        gpu_crops_per_s=args.gpu_crops_per_s,
    )
    report = measure_prior_cost(config, progress=not args.quiet)
    print("\n".join(report.lines()))
    print(f"\nwritten: {write_report(report, args.output)}")
    return 0

"""``phyvlm-cr benchmark quality``: restoration quality against peer methods, with known truth.

Clouds are simulated on clear imagery (``pipeline.bench.simulate``), every method restores
the same inputs, and the table of metrics per pixel class is printed, written as JSON and
drawn as a figure. The science lives in ``pipeline.bench.quality``; this module only maps
flags to its config.
"""

from __future__ import annotations

import argparse

HELP = "restoration quality vs peer methods on simulated clouds with known truth"
DESCRIPTION = (
    "Simulate thin cloud, thick cloud, shadow and mixed scenes on clear imagery (the real "
    "two-date Planetary Computer image in ../shared/data, synthetic stacks, or any stack given "
    "as a path), restore them with every method, and report PSNR/SSIM/SAM/RMSE/MAE for all, "
    "clear, thin, thick and shadow pixels plus the seam error at cloud boundaries, under "
    "scenarios of the other dates (scene-wide haze or cloud on the nearest dates, snow melt, "
    "harvest) and with real cloud fields, with an oracle-reference row that shows what the reference choice costs. Writes "
    "quality.json and quality.png into --output."
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}"
        ) from None


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_arguments(p: argparse.ArgumentParser) -> None:
    from pipeline.bench.quality import QualityConfig

    d = QualityConfig()
    p.add_argument(
        "--inputs",
        type=_words,
        default=d.inputs,
        help=(
            "comma-separated: 'austria' (the real 2-date image), 'synthetic' (generated stacks), "
            "or paths to a GeoTIFF/Zarr/NetCDF stack (default %(default)s)"
        ),
    )
    p.add_argument(
        "--kinds", type=_words, default=d.kinds, help="cloud kinds (default %(default)s)"
    )
    p.add_argument(
        "--covers",
        type=_floats,
        default=d.covers,
        help="cloud covers in [0.1, 0.9] (default %(default)s)",
    )
    p.add_argument(
        "--seeds", type=_ints, default=d.seeds, help="simulation seeds (default %(default)s)"
    )
    p.add_argument(
        "--methods", type=_words, default=d.methods, help="methods to run (default: all)"
    )
    p.add_argument(
        "--scenarios",
        type=_words,
        default=d.scenarios,
        help=(
            "what the other dates look like: 'none' (as they are), 'hazy_neighbours', "
            "'cloudy_neighbours' (the nearest dates under scene-wide haze / thick cloud), "
            "'snow_melt' (snow on the nearest dates, none on the target), 'harvest' (fields "
            "green before, bare soil on the target), 'real_clouds' (the target's clouds and "
            "shadows taken from a real Sentinel-2 scene in ../shared/data) (default: all)"
        ),
    )
    p.add_argument(
        "--scenario-kinds",
        type=_words,
        default=d.scenario_kinds,
        help="cloud kinds on the target for the scenarios other than 'none' (default %(default)s)",
    )
    p.add_argument(
        "--scenario-covers",
        type=_floats,
        default=d.scenario_covers,
        help="cloud covers for the scenarios other than 'none' (default %(default)s)",
    )
    p.add_argument(
        "--real-covers",
        type=_floats,
        default=d.real_covers,
        help="cloud and shadow covers of the 'real_clouds' cases, at most 0.6 (default %(default)s)",
    )
    p.add_argument(
        "--synthetic-size",
        type=int,
        default=d.synthetic_size,
        help="synthetic image side, px (default %(default)s)",
    )
    p.add_argument(
        "--synthetic-dates",
        type=int,
        default=d.synthetic_dates,
        help="synthetic dates (default %(default)s)",
    )
    p.add_argument(
        "--output",
        "-o",
        default="benchmark-quality",
        metavar="DIR",
        help="folder for quality.json and quality.png",
    )


def main(args: argparse.Namespace) -> int:
    from pipeline.bench.quality import QualityConfig, run_quality_benchmark

    config = QualityConfig(
        inputs=args.inputs,
        kinds=args.kinds,
        covers=args.covers,
        seeds=args.seeds,
        methods=args.methods,
        scenarios=args.scenarios,
        scenario_kinds=args.scenario_kinds,
        scenario_covers=args.scenario_covers,
        real_covers=args.real_covers,
        synthetic_size=args.synthetic_size,
        synthetic_dates=args.synthetic_dates,
    )
    report = run_quality_benchmark(config, output_dir=args.output, progress=not args.quiet)
    print(report.table())
    print(f"\nwritten: {report.json_path}  {report.figure_path}")
    return 0

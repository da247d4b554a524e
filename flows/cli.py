"""The ``phyvlm-cr`` command: search, run, demo, benchmark.

A thin layer over the library: it parses flags into typed configs, calls one flow and maps
failures to exit codes with a message that names the fix.

Exit codes: 0 done; 1 the run failed; 2 bad arguments; 3 nothing found; 4 catalog or
cluster unreachable; 5 the output exists (use --resume or --overwrite).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Literal

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOTHING_FOUND, EXIT_UNREACHABLE, EXIT_EXISTS = range(6)

log = logging.getLogger("phyvlm_cr")

#: ``phyvlm-cr benchmark KIND``: each is a module ``flows.benchmarks.KIND`` with HELP,
#: DESCRIPTION, ``add_arguments(parser)`` and ``main(args) -> exit code``; the modules import
#: their heavy dependencies inside ``main`` so that building the parser stays fast.
BENCHMARKS: tuple[str, ...] = ("quality", "speed", "prior", "tiles", "layout", "memory")


def _bbox(text: str) -> tuple[float, float, float, float]:
    parts = text.replace(",", " ").split()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"bbox needs 4 numbers 'west,south,east,north' in degrees, got {text!r}"
        )
    try:
        west, south, east, north = (float(p) for p in parts)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"bbox values must be numbers, got {text!r}") from exc
    return west, south, east, north


def _bands(text: str) -> tuple[str, ...]:
    return tuple(b.strip().upper() for b in text.split(",") if b.strip())


def _add_search_args(p: argparse.ArgumentParser) -> None:
    from pipeline.catalog import DEFAULT_COLLECTION, PLANETARY_COMPUTER_STAC

    area = p.add_mutually_exclusive_group(required=True)
    area.add_argument(
        "--bbox",
        type=_bbox,
        metavar="W,S,E,N",
        help="area in degrees (lon/lat); write --bbox=-10,35,5,44 when west is negative",
    )
    area.add_argument(
        "--geometry",
        metavar="FILE",
        help="area as a GeoJSON file (Feature, FeatureCollection or geometry)",
    )
    p.add_argument(
        "--datetime", required=True, metavar="START/END", help="e.g. 2024-05-01/2024-06-30"
    )
    p.add_argument(
        "--max-cloud",
        type=float,
        default=None,
        metavar="PCT",
        help="keep items with eo:cloud_cover below PCT",
    )
    p.add_argument("--tile", default=None, metavar="MGRS", help="only this MGRS tile, e.g. 33UUP")
    p.add_argument("--collection", default=DEFAULT_COLLECTION)
    p.add_argument(
        "--catalog",
        default=PLANETARY_COMPUTER_STAC,
        help="STAC API URL (default: Planetary Computer) or a local folder / items.json",
    )
    p.add_argument("--limit", type=int, default=None, metavar="N", help="stop after N items")


def _search_params(args: argparse.Namespace):
    from pipeline.catalog import SearchParams, read_geometry

    return SearchParams(
        bbox=args.bbox,
        intersects=read_geometry(args.geometry) if args.geometry else None,
        datetime=args.datetime,
        collection=args.collection,
        max_cloud_cover=args.max_cloud,
        mgrs_tile=args.tile,
        catalog=args.catalog,
        max_items=args.limit,
    )


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dask cluster")
    g.add_argument(
        "--scheduler", metavar="ADDRESS", help="attach to a running scheduler, e.g. tcp://host:8786"
    )
    g.add_argument(
        "--cluster",
        choices=("local", "cuda", "kubernetes"),
        default="local",
        help="cluster to start (default local)",
    )
    g.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: min(cores, 4))"
    )
    g.add_argument("--threads", type=int, default=None, help="threads per worker")
    g.add_argument("--memory-limit", default=None, help="per worker, e.g. 4GiB")
    g.add_argument("--dashboard", default=":8787", help="dashboard address (default :8787)")
    g.add_argument(
        "--kubernetes-image",
        default=None,
        metavar="IMAGE",
        help="image of the scheduler and worker pods with --cluster kubernetes (default: "
        "$PHYVLM_KUBERNETES_IMAGE, else the image deploy/ builds, phyvlm-cr:<version>)",
    )


def _cluster_config(args: argparse.Namespace):
    from pipeline.cluster import ClusterConfig

    if args.kubernetes_image and args.cluster != "kubernetes":
        raise ValueError("--kubernetes-image is for --cluster kubernetes; add that flag or drop it")
    if args.scheduler:
        return ClusterConfig(kind="address", address=args.scheduler)
    return ClusterConfig(
        kind=args.cluster,
        n_workers=args.workers,
        threads_per_worker=args.threads,
        memory_limit=args.memory_limit,
        dashboard_address=args.dashboard,
        **({"kubernetes_image": args.kubernetes_image} if args.kubernetes_image else {}),
    )


def _add_output_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("output")
    g.add_argument(
        "--zarr-format",
        type=int,
        choices=(2, 3),
        default=3,
        help="3 (default); 2 for GDAL < 3.13 / QGIS",
    )
    g.add_argument(
        "--chunk-size",
        type=int,
        default=1024,
        help="spatial chunk of cube and archive, px (default 1024)",
    )
    g.add_argument(
        "--shard-size",
        type=int,
        default=None,
        metavar="PX",
        help="Zarr 3: one object per PX x PX block of chunks (default: tiled runs one shard per tile, single-grid runs none)",
    )
    g.add_argument(
        "--no-shards", action="store_true", help="one object per chunk, even for tiled Zarr 3 runs"
    )
    g.add_argument(
        "--no-overviews",
        action="store_true",
        help="do not write overview levels (1/2, 1/4, ...) into the store",
    )
    g.add_argument(
        "--no-stac", action="store_true", help="do not write the STAC Collection beside the store"
    )
    when = g.add_mutually_exclusive_group()
    when.add_argument(
        "--resume", action="store_true", help="finish an interrupted run into the existing store"
    )
    when.add_argument("--overwrite", action="store_true", help="replace an existing store")


def _add_tiling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tiles (areas larger than one tile go tile by tile into one store)")
    g.add_argument(
        "--tile-size",
        type=int,
        default=2048,
        help="tile side in px, a multiple of --chunk-size (default 2048)",
    )
    g.add_argument(
        "--tile-retries",
        type=int,
        default=2,
        help="retries of a failed tile before it is reported (default 2)",
    )
    g.add_argument(
        "--tiles-in-flight",
        type=int,
        default=None,
        help="tiles processed at once (default: one per worker, at least 2)",
    )
    g.add_argument(
        "--tiled",
        action="store_true",
        help="tiled store layout even for an area of one tile (periodic composites)",
    )
    g.add_argument(
        "--no-seamless-tiles", dest="seamless_tiles", action="store_false",
        help="read no halo around tiles and estimate scene parameters per tile (cheaper; values step at tile edges)",
    )  # fmt: skip


def _tiling_config(args: argparse.Namespace):
    from pipeline.tiling import TilingConfig

    return TilingConfig(
        tile_size=args.tile_size,
        retries=args.tile_retries,
        tiles_in_flight=args.tiles_in_flight,
        seamless=args.seamless_tiles,
    )


def _add_prior_args(p: argparse.ArgumentParser) -> None:
    from pipeline.priors import DEFAULT_PRIOR, available_priors, available_sources

    g = p.add_argument_group("prior (physics, or physics refined by a Qwen VL model)")
    g.add_argument(
        "--prior",
        type=_prior_name,
        default=DEFAULT_PRIOR,
        metavar="PRIOR",
        help=f"a base prior ({', '.join(available_priors())}) optionally joined by '+' with cloud-evidence sources ({', '.join(available_sources())}), e.g. physics+stack (default {DEFAULT_PRIOR})",
    )
    g.add_argument(
        "--vlm-model",
        metavar="PATH_OR_ID",
        help="Qwen2-VL / Qwen2.5-VL / Qwen3-VL checkpoint folder (or hub id where there is internet); needs --prior vlm",
    )
    g.add_argument(
        "--vlm-region-px",
        type=int,
        default=None,
        metavar="PX",
        help="side of a VLM region (crop) in output pixels (default 256)",
    )
    g.add_argument(
        "--vlm-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="crops per forward pass (default 16)",
    )
    g.add_argument(
        "--vlm-gpu",
        type=float,
        default=None,
        metavar="UNITS",
        help="each restore task asks Dask for this much worker resource 'GPU' (workers started with --resources GPU=1)",
    )


def _prior_name(value: str) -> str:
    """argparse type of --prior: a base prior and evidence sources joined by '+'."""
    from pipeline.priors import DEFAULT_PRIOR, available_priors, available_sources

    base, *sources = value.split("+")
    if base in available_sources():
        base, sources = "physics", [base, *sources]
    unknown = [p for p in [base, *sources] if p not in (*available_priors(), *available_sources())]
    if base not in available_priors() or unknown or base in sources:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a prior: use a base prior ({', '.join(available_priors())}) "
            f"optionally joined by '+' with evidence sources ({', '.join(available_sources())}), "
            f"e.g. {DEFAULT_PRIOR}"
        )
    return value


def _prior_options(args: argparse.Namespace) -> dict:
    """Keywords of the chosen prior from the --vlm-* flags (ValueError names the fix)."""
    flags = {
        "model": args.vlm_model,
        "region_px": args.vlm_region_px,
        "batch_size": args.vlm_batch_size,
        "gpu_resource": args.vlm_gpu,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    if args.prior.split("+")[0] != "vlm":
        if given:
            raise ValueError("the --vlm-* options need --prior vlm")
        return {}
    if not args.vlm_model:
        raise ValueError(
            f"--prior {args.prior} needs --vlm-model PATH_OR_ID (a Qwen VL checkpoint folder)"
        )
    return given


def _archive_config(args: argparse.Namespace):
    from pipeline.archive import ArchiveConfig

    mode: Literal["create", "resume", "overwrite"] = (
        "resume" if args.resume else "overwrite" if args.overwrite else "create"
    )
    if args.shard_size and args.no_shards:
        raise ValueError("--shard-size and --no-shards contradict each other: give one")
    if args.shard_size and args.zarr_format != 3:
        raise ValueError("--shard-size needs --zarr-format 3 (Zarr 2 has no shards)")
    return ArchiveConfig(
        zarr_format=args.zarr_format,
        chunk_size=args.chunk_size,
        mode=mode,
        shard_size=args.shard_size,
    )


def build_parser() -> argparse.ArgumentParser:
    from pipeline._bands import DEFAULT_BANDS

    parser = argparse.ArgumentParser(
        prog="phyvlm-cr",
        description=(
            "Cloud removal for Sentinel-2 L2A: STAC search, lazy odc-stac datacubes, "
            "physics-guided restoration on Dask, cloud-free Zarr archives."
        ),
        epilog="Start with 'phyvlm-cr demo' (offline, a few minutes). Docs: README.md.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="warnings and errors only, no progress bars"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_search = sub.add_parser(
        "search",
        help="list the items a search finds",
        description="Search a STAC catalog and print what was found (after de-duplication).",
    )
    _add_search_args(p_search)
    p_search.add_argument(
        "--json", action="store_true", help="print the items as a GeoJSON FeatureCollection"
    )

    p_run = sub.add_parser(
        "run",
        help="search, restore and write a cloud-free Zarr archive",
        description="Search, load a lazy datacube, restore every date (or a composite) on Dask and write Zarr.",
    )
    _add_search_args(p_run)
    p_run.add_argument(
        "--output", "-o", required=True, metavar="STORE", help="Zarr store path or fsspec URL"
    )
    p_run.add_argument(
        "--bands",
        type=_bands,
        default=DEFAULT_BANDS,
        help=f"comma-separated asset keys (default {','.join(DEFAULT_BANDS)})",
    )
    p_run.add_argument(
        "--resolution", type=float, default=10.0, help="pixel size in CRS units (default 10)"
    )
    p_run.add_argument(
        "--crs",
        default=None,
        help="output CRS, e.g. EPSG:32633 (default: one tile: the items' most common; tiled: the area's UTM zone, else equal-area EPSG:3035 in Europe / EPSG:6933)",
    )
    p_run.add_argument(
        "--mode",
        choices=("dates", "composite"),
        default="dates",
        help="restore every date (default) or one composite per period",
    )
    p_run.add_argument(
        "--period",
        default=None,
        help="composite period: monthly, quarterly, yearly or a start-anchored pandas alias (MS, QS, 14D); default the whole range. Tiled with --resume: a later --datetime appends its periods, a finished period is a no-op",
    )
    p_run.add_argument("--no-scl", action="store_true", help="do not load SCL as evidence")
    p_run.add_argument(
        "--on-read-error",
        choices=("raise", "count"),
        default="raise",
        help="fail on a read error (default) or write nodata and count it",
    )
    p_run.add_argument(
        "--no-validation",
        action="store_true",
        help="skip the self-validation (held-out clear pixels under simulated cloud; recorded in the archive)",
    )
    p_run.add_argument(
        "--validation-window",
        type=int,
        default=64,
        metavar="PX",
        help="side of a self-validation window (default 64)",
    )
    p_run.add_argument(
        "--validation-windows",
        type=int,
        default=8,
        metavar="N",
        help="self-validation windows over the whole run, spread over the area and its tiles (default 8)",
    )
    p_run.add_argument(
        "--time-window-dates",
        type=int,
        default=None,
        metavar="N",
        help="references from at most N dates on each side; restores in time blocks, memory bounded (default: unbounded)",
    )
    p_run.add_argument(
        "--time-block",
        type=int,
        default=None,
        metavar="N",
        help="target dates per time block (default: the most that fit the workers' memory limit)",
    )
    _add_prior_args(p_run)
    _add_output_args(p_run)
    _add_tiling_args(p_run)
    _add_cluster_args(p_run)

    p_demo = sub.add_parser(
        "demo",
        help="the whole pipeline offline on a synthetic stack with known truth",
        description=(
            "Generate a realistic synthetic Sentinel-2 L2A stack (COGs + STAC items), find it through "
            "the search code, restore it on a local Dask cluster, write Zarr, print accuracy "
            "against the truth and save a quicklook PNG. No internet, no credentials."
        ),
    )
    p_demo.add_argument(
        "--output",
        "-o",
        default="phyvlm-demo",
        metavar="DIR",
        help="folder for COGs, store and PNG (default ./phyvlm-demo)",
    )
    p_demo.add_argument(
        "--size", type=int, default=512, help="image side in pixels at 10 m (default 512)"
    )
    p_demo.add_argument("--dates", type=int, default=10, help="number of dates (default 10)")
    p_demo.add_argument("--seed", type=int, default=0)
    p_demo.add_argument(
        "--chunk-size", type=int, default=256, help="spatial chunk, px (default 256)"
    )
    p_demo.add_argument("--workers", type=int, default=2)
    p_demo.add_argument("--threads", type=int, default=1)
    p_demo.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    p_demo.add_argument(
        "--overwrite", action="store_true", help="replace the demo folder's store if it exists"
    )
    p_demo.add_argument(
        "--overview-min-size",
        type=int,
        default=256,
        metavar="PX",
        help="overview levels halve the resolution until the image fits PX (default 256)",
    )
    _add_prior_args(p_demo)

    p_bench = sub.add_parser(
        "benchmark",
        help="measure quality, speed or prior cost; prints a table and writes JSON",
        description="Benchmarks. Each prints its table and writes the figures as JSON (and figures where it has them).",
    )
    kinds = p_bench.add_subparsers(dest="benchmark", required=True, metavar="KIND")
    for name in BENCHMARKS:
        module = importlib.import_module(f"flows.benchmarks.{name}")
        module.add_arguments(
            kinds.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        )
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    """Our loggers at INFO by default (WARNING with -q); other libraries at WARNING unless -vv."""
    import distributed  # noqa: F401  (it installs its own handlers on import: tame them after)

    ours = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose >= 2 else logging.INFO)
    others = (
        logging.DEBUG
        if args.verbose >= 3
        else (logging.INFO if args.verbose >= 2 else logging.WARNING)
    )
    logging.basicConfig(
        level=others, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger().setLevel(others)
    for name in ("distributed", "bokeh", "tornado", "rasterio", "urllib3", "fsspec", "numba"):
        logging.getLogger(name).setLevel(
            max(others, logging.WARNING if args.verbose < 3 else others)
        )
    for name in ("pipeline", "flows", "phyvlm_cr"):
        logging.getLogger(name).setLevel(ours)


def _cmd_search(args: argparse.Namespace) -> int:
    from pipeline.catalog import items_table, search

    items = search(_search_params(args))
    if args.json:
        fc = {"type": "FeatureCollection", "features": [it.to_dict() for it in items]}
        print(json.dumps(fc, indent=1))
    else:
        print(items_table(items))
        print(f"{len(items)} item(s)")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.cube import CubeConfig
    from pipeline.tiling import resolve_period
    from pipeline.validation import ValidationConfig

    from .run import RunConfig, run

    config = RunConfig(
        search=_search_params(args),
        output=args.output,
        cube=CubeConfig(
            bands=args.bands,
            resolution=args.resolution,
            crs=args.crs,
            chunk_size=args.chunk_size,
            include_scl=not args.no_scl,
            on_read_error=args.on_read_error,
        ),
        archive=_archive_config(args),
        cluster=_cluster_config(args),
        mode=args.mode,
        period=resolve_period(args.period),
        prior=args.prior,
        prior_options=_prior_options(args),
        tiling=_tiling_config(args),
        tiled=True if args.tiled else None,
        validation=ValidationConfig(
            enabled=not args.no_validation,
            window=args.validation_window,
            windows=args.validation_windows,
        ),
        overviews=not args.no_overviews,
        stac=not args.no_stac,
        shard_by_tile=not args.no_shards,
        time_window_dates=args.time_window_dates,
        time_block=args.time_block,
    )
    summary = run(config, progress=not args.quiet)
    print("\n".join(summary.lines()))
    if summary.failed_tiles:
        print(
            f"error: {summary.failed_tiles} tile(s) failed; rerun the same command with --resume "
            "to finish them (finished tiles are skipped)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if summary.read_failures:
        print(
            f"WARNING: {len(summary.read_failures)} read failure(s) written as nodata:",
            file=sys.stderr,
        )
        for failure in summary.read_failures[:20]:
            print(f"  {failure}", file=sys.stderr)
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    result = run_demo(
        DemoConfig(
            output_dir=args.output,
            size=args.size,
            dates=args.dates,
            seed=args.seed,
            chunk_size=args.chunk_size,
            workers=args.workers,
            threads=args.threads,
            zarr_format=args.zarr_format,
            overwrite=args.overwrite,
            overview_min_size=args.overview_min_size,
            prior=args.prior,
            prior_options=_prior_options(args),
        ),
        progress=not args.quiet,
    )
    print(result.report())
    return EXIT_OK


def _cmd_benchmark(args: argparse.Namespace) -> int:
    module = importlib.import_module(f"flows.benchmarks.{args.benchmark}")
    return int(module.main(args))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    from pipeline.archive import ArchiveExistsError, ArchiveMismatchError
    from pipeline.catalog import CatalogUnreachable, NoItemsFound, SearchError

    handlers = {
        "search": _cmd_search,
        "run": _cmd_run,
        "demo": _cmd_demo,
        "benchmark": _cmd_benchmark,
    }
    try:
        return handlers[args.command](args)
    except NoItemsFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NOTHING_FOUND
    except (CatalogUnreachable, ConnectionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ArchiveExistsError, ArchiveMismatchError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_EXISTS
    except (SearchError, ValueError, FileNotFoundError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: rerun the same command with --resume to finish", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the last line of defence prints, logs and exits 1
        log.debug("run failed", exc_info=True)
        print(
            f"error: {type(exc).__name__}: {exc} (run with -vv for the traceback)", file=sys.stderr
        )
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())

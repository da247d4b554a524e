"""The install fits the user: the base set is the CPU pipeline (no torch, no CUDA), the VLM and
GPU parts are extras, and every extra a message or document names exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11; the package itself supports 3.10
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0].lower()


def test_the_base_install_pulls_no_torch_transformers_or_cuda():
    base = {_name(r) for r in PROJECT["dependencies"]}
    assert not base & {"torch", "transformers", "dask-cuda", "torchvision"}, base
    assert not any(n.startswith(("nvidia-", "cuda")) for n in base)
    extras = PROJECT["optional-dependencies"]
    assert {_name(r) for r in extras["vlm"]} >= {"torch", "transformers"}
    gpu = {_name(r) for r in extras["gpu"]}
    assert "dask-cuda" in gpu and any("[vlm]" in r for r in extras["gpu"])
    # The test set runs the VLM prior's tests and the Kubernetes factory's spec test.
    dev_self = next(r for r in extras["dev"] if _name(r) == "phyvlm-cr")
    assert {"vlm", "kubernetes", "stac-server"} <= set(
        re.findall(r"[a-z-]+", dev_self.split("[")[1])
    )


def _named_extras() -> dict[str, set[str]]:
    """Extras named as phyvlm-cr[...] in the code, the docs, the Makefile and the Dockerfiles."""
    files = [
        *ROOT.glob("pipeline/**/*.py"),
        *ROOT.glob("flows/**/*.py"),
        *ROOT.glob("deploy/**/*"),
        ROOT / "README.md",
        ROOT / "Makefile",
    ]
    named: dict[str, set[str]] = {}
    for path in files:
        if path.is_file():
            for group in re.findall(r"phyvlm-cr\[([a-z0-9,_-]+)\]", path.read_text()):
                for extra in group.split(","):
                    named.setdefault(extra, set()).add(str(path.relative_to(ROOT)))
    return named


def test_every_extra_named_in_messages_and_docs_exists():
    named = _named_extras()
    assert "vlm" in named  # the VLM prior's hint names it
    missing = {e: sorted(w) for e, w in named.items() if e not in PROJECT["optional-dependencies"]}
    assert not missing, f"extras named but not in pyproject.toml: {missing}"


#: A machine without torch and transformers: an import of either raises ModuleNotFoundError
#: and importlib.util.find_spec finds neither (a None entry in sys.modules does both).
_WITHOUT_TORCH = "import sys\nsys.modules['torch'] = None\nsys.modules['transformers'] = None\n"


def _run_without_torch(body: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH + textwrap.dedent(body)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_cpu_pipeline_runs_without_torch_and_the_vlm_prior_names_its_extra(tmp_path):
    """Restore with the physics prior and write an archive on a machine without torch; the
    VLM prior is refused on the client with the install command."""
    body = f"""
    import numpy as np, pandas as pd, xarray as xr, rioxarray
    import pipeline, flows.cli
    from pipeline.synthetic import make_stack
    stack = make_stack(shape=(4, 64, 64), seed=1)
    cube = stack.observed.chunk({{"time": -1, "y": 32, "x": 32}})
    restored = pipeline.restore(cube)
    pipeline.write_archive(restored, {str(tmp_path / "cpu.zarr")!r},
                           pipeline.ArchiveConfig(chunk_size=32), progress=False)
    back = pipeline.open_archive({str(tmp_path / "cpu.zarr")!r})
    assert np.isfinite(back["B04"].values).mean() > 0.9
    assert all(sys.modules.get(m) is None for m in ("torch", "transformers"))
    try:
        pipeline.priors.get_prior("vlm", model="/models/qwen")
    except ImportError as exc:
        print("HINT:", exc)
    """
    proc = _run_without_torch(body)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hint = next(line for line in proc.stdout.splitlines() if line.startswith("HINT:"))
    assert "torch and transformers not installed" in hint and "phyvlm-cr[vlm]" in hint
    assert "whl/cpu" in hint

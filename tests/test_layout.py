"""The house rules of the layout: the benchmark is a leaf that nothing in a run imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules_after(code: str) -> set[str]:
    """The module names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = textwrap.dedent(code) + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def test_the_run_path_does_not_import_the_benchmark():
    # importing every run module, then self-validating a cube (which simulates cloud, the
    # part that used to come from pipeline.bench), must leave the benchmark unloaded
    loaded = _modules_after(
        """
        import flows.cli, flows.run, flows.tiled
        import pipeline, pipeline.archive, pipeline.restore, pipeline.validation
        from pipeline.synthetic import make_stack
        from pipeline.validation import ValidationConfig, self_validate

        cube = make_stack((3, 48, 48), seed=1).observed
        result = self_validate(cube, config=ValidationConfig(window=32, dates_per_window=1))
        assert result.pixels > 0, result.line()
        """
    )
    assert "pipeline.cloud_simulator" in loaded  # the check saw the simulator being used
    assert not {m for m in loaded if m == "pipeline.bench" or m.startswith("pipeline.bench.")}

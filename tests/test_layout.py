"""The house rules of the layout: the benchmark is a leaf that nothing in a run imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

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


def _imports(package: str) -> dict[str, set[str]]:
    """Module -> modules of ``package`` it imports, anywhere in the file (lazy imports in a
    function count: they close a circle as surely at run time)."""
    import ast

    root = ROOT / package.replace(".", "/")
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = here
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.level and node.module else node.module
                target = target or base
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m.startswith(package + ".") and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle among the graph's modules, or [] when there is none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


@pytest.mark.parametrize("package", ["flows", "pipeline"])
def test_no_import_circle(package):
    graph = _imports(package)
    assert graph, package
    assert _cycle(graph) == []


def test_the_cycle_check_sees_a_circle():
    assert _cycle({"a.x": {"a.y"}, "a.y": {"a.z"}, "a.z": {"a.x"}}) == ["a.x", "a.y", "a.z", "a.x"]


def test_public_functions_are_not_shadowed_by_their_stage_packages():
    # pipeline.search and pipeline.composite are the functions the README's Library section
    # calls; their stages live in pipeline.catalog and pipeline.compositing
    import pipeline
    import pipeline.catalog
    import pipeline.compositing
    from pipeline.restore import composite

    assert pipeline.search is pipeline.catalog.search
    assert pipeline.composite is pipeline.compositing.composite is composite
    assert {"search", "composite", "SearchParams"} <= set(pipeline.__all__)

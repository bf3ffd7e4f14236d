"""The tree stays clean under the linter configured in pyproject.toml (ruff, line length 120)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)], capture_output=True,
                            text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def _import_graph() -> dict[str, set[str]]:
    """Module -> the `purejaxmt` modules it imports, counting imports inside functions too (a lazy import that closes
    a circle is still a circle)."""
    import ast

    package = ROOT / "purejaxmt"
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
               for path in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{alias.name}" for alias in node.names} | {node.module}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        # Importing a package's submodule imports the package: count the edge to the module itself only.
        graph[name] = {target for target in targets if target in modules and target != name
                       and not name.startswith(target + ".")}
    return graph


# The layout, from the top: the command line; the studies (plans over runs); the after-run report (read-only over
# run directories); the benchmark; the training side (runner); the method and its loop. No layer imports one above it.
ABOVE = {
    "purejaxmt.studies": ("purejaxmt.cli",),
    "purejaxmt.report": ("purejaxmt.cli", "purejaxmt.studies"),
    "purejaxmt.benchmarking": ("purejaxmt.cli", "purejaxmt.studies"),
    "purejaxmt.runner": ("purejaxmt.cli", "purejaxmt.studies", "purejaxmt.report", "purejaxmt.benchmarking"),
    "purejaxmt.agents": ("purejaxmt.cli", "purejaxmt.studies", "purejaxmt.report", "purejaxmt.benchmarking",
                         "purejaxmt.runner"),
    "purejaxmt.envs": ("purejaxmt.cli", "purejaxmt.studies", "purejaxmt.report", "purejaxmt.benchmarking",
                       "purejaxmt.runner", "purejaxmt.agents", "purejaxmt.offpolicy"),
}


def test_no_layer_imports_one_above_it():
    graph = _import_graph()
    wrong = [f"{module} -> {target}" for module, targets in graph.items() for layer, above in ABOVE.items()
             if module == layer or module.startswith(layer + ".")
             for target in targets if any(target == up or target.startswith(up + ".") for up in above)]
    assert not wrong, f"imports from a lower layer to a higher one: {wrong}"


def test_no_import_circles():
    """`purejaxmt` imports form no cycle: the after-run side (plotting, render, ablation) reads run directories
    through the runner's reader, and nothing in the runner imports it back."""
    graph = _import_graph()
    # The runner package's __init__ re-exports its modules for users; its members never import it.
    graph["purejaxmt.runner"] = set()

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for name in sorted(graph) if (cycle := cycle_from(name))]
    assert not cycles, f"import circles: {cycles[:3]}"

"""The layers, enforced: the import graph of `deployvit/` and `exporters/` (imports inside
functions included) has no cycle and no import against the order

    base < supernet < exporters < train, latency (siblings) < search, contract < commands < cli

where siblings do not import each other. `exporters` sits below `latency` rather than beside it
(DESIGN.md section 6 drew them as siblings): a latency table's onnxruntime and tensorrt entries are
timed on exported parts, so `latency.runtimes` needs the exporter, and nothing in `exporters` needs
a latency table (export's latency contract, which needs both, is `deployvit.contract`, above them).
A failure names the offending import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = {"deployvit", "deployvit.errors", "deployvit.io", "deployvit.arch", "deployvit.spaces", "deployvit.parts",
        "deployvit.counting", "deployvit.models", "deployvit.latency.timing", "deployvit.latency.settings",
        "deployvit.compute", "deployvit.units", "deployvit.weights", "deployvit.devices"}
SIBLINGS = ("deployvit.train", "deployvit.latency")

BASE |= {"deployvit.registry"}  # the records of scores, search methods and samplers (names and targets, no imports)
BASE |= {"deployvit.runs"}  # which file of a run folder an option means (paths only)
#: the Python API's profile/export call the commands (deployvit.search(...) is the search package,
#: callable; `deployvit`'s lazy attributes name their modules as strings, as the CLI's command table does)
TOP = {"deployvit.cli", "deployvit.__main__", "deployvit.api"}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in ("deployvit", "exporters"):
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every project module `name` imports, at any depth of its code (a function-level import is
    still a dependency: it only moves the cycle to run time)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def layer(name: str) -> tuple[int, str]:
    if name in BASE:
        return 0, "base"
    if name.startswith("deployvit.supernet"):
        return 1, "supernet"
    if name == "exporters" or name.startswith("exporters."):
        return 2, "exporters"
    for sibling in SIBLINGS:
        if name == sibling or name.startswith(sibling + "."):
            return 3, sibling
    if name.startswith("deployvit.search") or name == "deployvit.contract":
        return 4, "search"
    if name.startswith("deployvit.commands"):
        return 5, "commands"
    if name in TOP:
        return 6, "cli"
    raise AssertionError(f"module {name} has no layer: add it to tests/test_layers.py and DESIGN.md section 6")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_no_import_against_the_layer_order():
    bad = []
    for name, deps in sorted(graph().items()):
        (lv, group) = layer(name)
        for dep in sorted(deps):
            (dv, dgroup) = layer(dep)
            if dv > lv or (dv == lv == 3 and dgroup != group):
                bad.append(f"{name} ({group}) imports {dep} ({dgroup})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)


def test_the_checker_sees_function_level_imports(tmp_path):
    """The graph is not vacuous: a function-level import is found."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from deployvit.search.run import run_search\n")
    assert imports_of("deployvit.x", src, modules()) == {"deployvit.search.run"}

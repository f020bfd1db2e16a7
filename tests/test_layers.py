"""The layers, enforced: the import graph of `deployvit/` and `exporters/` (imports inside
functions included) has no cycle and no import against the order

    base < supernet < exporters < runtimes < train, latency (siblings) < search, importers, contract < commands < cli

where siblings do not import each other, and every module's layer is where its file is: base is the
top-level modules of `deployvit/` (errors, io, arch, spaces, parts, counting, models, devices,
weights, compute, units, timing, settings, runtime_registry) other than the three the order names
above (contract, cli and its `__main__`), every other layer a package.
- `exporters` only export (ONNX graphs, TensorRT engines) and verify; they run nothing themselves:
  `exporters.benchmark` is handed the runtime whose artifact it verifies and times.
- `runtimes` run modules and exported files (a table's file-based entries are timed on exported
  parts, so they sit above the exporters). The facts about each runtime are
  `deployvit.runtime_registry`, torch-free and in the base, so every layer can read them; a
  runtime's code is imported from there by name only (`deployvit.runtimes.get_runtime`).
- `latency` (tables, profiling, estimates) and `train` build on both; export's latency contract,
  which joins tables and artifacts, is `deployvit.contract`, beside `search`.
A failure names the offending import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = {"deployvit", "deployvit.errors", "deployvit.io", "deployvit.arch", "deployvit.spaces", "deployvit.parts",
        "deployvit.counting", "deployvit.models", "deployvit.timing", "deployvit.settings",
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


def is_base(name: str, known: dict[str, Path]) -> bool:
    """A top-level module of `deployvit/` (not a package, not the command line): base by where it is."""
    path = known[name]
    return name == "deployvit" or (path.parent == ROOT / "deployvit" and path.name != "__init__.py"
                                   and name != "deployvit.contract" and name not in TOP)


def layer(name: str, known: dict[str, Path] | None = None) -> tuple[int, str]:
    if is_base(name, known or modules()):
        return 0, "base"
    if name.startswith("deployvit.supernet"):
        return 1, "supernet"
    if name == "exporters" or name.startswith("exporters."):
        return 2, "exporters"
    if name.startswith("deployvit.runtimes"):
        return 3, "runtimes"
    for sibling in SIBLINGS:
        if name == sibling or name.startswith(sibling + "."):
            return 4, sibling
    if name.startswith("deployvit.search") or name.startswith("deployvit.importers") or name == "deployvit.contract":
        return 5, "search"
    if name.startswith("deployvit.commands"):
        return 6, "commands"
    if name in TOP:
        return 7, "cli"
    raise AssertionError(f"module {name} has no layer: add it to tests/test_layers.py and the README's Development section")


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_no_import_against_the_layer_order():
    known = modules()
    bad = []
    for name, deps in sorted(graph().items()):
        (lv, group) = layer(name, known)
        for dep in sorted(deps):
            (dv, dgroup) = layer(dep, known)
            if dv > lv or (dv == lv == 4 and dgroup != group):
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


def test_base_is_the_top_level_modules_and_nothing_else():
    """No module is base by decree: every base module is a file directly in `deployvit/`, and every
    module of a package is in that package's layer."""
    known = modules()
    base = sorted(n for n in known if layer(n, known)[1] == "base")
    assert all(known[n].parent == ROOT / "deployvit" for n in base), base
    assert {"deployvit.timing", "deployvit.settings", "deployvit.runtime_registry"} <= set(base)
    assert not any(n.startswith("deployvit.latency.") for n in base)


def _imported_by(statement: str) -> set[str]:
    """Heavy modules a fresh interpreter has loaded after `statement`."""
    import subprocess
    import sys

    heavy = ("torch", "onnx", "onnxruntime", "openvino", "tensorrt", "timm")
    code = f"import sys\n{statement}\nprint(' '.join(m for m in {heavy!r} if sys.modules.get(m) is not None))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
    return set(out.stdout.split())


def test_loading_a_latency_table_imports_neither_onnx_nor_torch():
    """`LatencyTable` and the runtime table are plain data: reading them costs no heavy import."""
    assert _imported_by("from deployvit.latency.table import LatencyTable") == set()
    assert _imported_by("from deployvit.runtime_registry import RECORDS; [r.install_line() for r in RECORDS]") == set()

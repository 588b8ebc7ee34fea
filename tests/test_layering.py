"""Dependencies point one way: the import graph of altp/, baselines/ and eval/ is layered and acyclic.

The graph is built with ``ast`` from every import statement -- at module level or inside a
function (lazy imports count) -- plus ``importlib.import_module`` calls, and the package
``__init__`` files an import runs on the way (``import altp.pruning.base`` runs
``altp/pruning/__init__.py``). Hydra's ``_target_`` strings in ``conf/`` are not imports.

Layers, bottom first (a module may import its own group and any lower layer; groups of one
layer are independent of each other):

0. formats and shared numbers: predictions, GT data, run-directory naming, configs'
   location, provenance, the FLOPs model (eq. 5), the display order of pruner names,
   the device-sync helper
1. the pruner interface: :mod:`altp.pruning.base` and the record of what pruning did
2. pruner building blocks (SLIC regions, budgets) | the engine
3. pruners (altp.methods, baselines) | model adapters (above the engine)
4. the pruner catalogue (altp.pruners, which registers the built-ins) | evaluation
   (eval/, object coverage) -- which imports data formats (layer 0) only
5. entry points: the run machinery (altp.run: runner, command line, ...), training, figures,
   report (they call the evaluator)

Checked: every module has a layer, no edge goes up or across groups, no import cycle between
files, and none between the children of any package (altp's subpackages and top-level
modules, baselines and eval count as the children of the project).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("altp", "baselines", "eval")

# Bottom first: {group: module prefixes}. "altp" alone is altp/__init__.py.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {"formats and shared numbers": (
        "altp", "altp.configs", "altp.run_dir", "altp.provenance", "altp.flops", "altp.pruner_order",
        "altp.data", "altp._device", "altp.errors",
    )},
    {"pruner interface": ("altp.pruning", "altp.pruning.base", "altp.pruning.context", "altp.pruning.records")},
    {"pruner building blocks": ("altp.methods.superpixels", "altp.methods.budgets"),
     "engine": ("altp.pruning.engine", "altp.pruning._plan", "altp.pruning._scores",
                "altp.pruning._rowwise", "altp.pruning._kv_cache", "altp.pruning._selection",
                "altp.pruning._continuous")},
    {"pruners": ("altp.methods", "baselines"), "models": ("altp.models",)},
    {"catalogue": ("altp.pruners",), "evaluation": ("eval", "altp.coverage")},
    {"entry points": ("altp.run", "altp.train", "altp.viz", "altp.report")},
]  # fmt: skip
# Groups that may import only the bottom layer (data formats), not everything below them.
FORMATS_ONLY = {"evaluation"}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module that ``import name`` loads (``pkg.mod.attr`` -> ``pkg.mod``), or None if not ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(module: str, path: Path) -> set[str]:
    """Our modules that importing ``module`` may load directly (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    names: list[str] = []
    dynamic = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            names += [src] + [f"{src}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
            "import_module", "__import__"
        ):
            arg = node.args[0] if node.args else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.append(arg.value)
            else:  # a computed name: count every module this file spells out in full
                dynamic = True
    if dynamic:
        names += [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in MODULES]
    out = set()
    for name in names:
        target = _owner(name)
        if target is None or target == module:
            continue
        out.add(target)
        # Importing a.b.c runs a/__init__ and a/b/__init__ first, unless the importer is inside them.
        out.update(a for a in _ancestors(target) if a not in _ancestors(module) and a != module)
    return out


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _place(module: str) -> tuple[int, str] | None:
    """(layer, group) of the longest prefix listing ``module``; "altp" matches altp/__init__ only."""
    best: tuple[int, int, str] | None = None
    for layer, groups in enumerate(LAYERS):
        for group, prefixes in groups.items():
            for p in prefixes:
                if module == p or (p != "altp" and module.startswith(p + ".")):
                    if best is None or len(p) > best[0]:
                        best = (len(p), layer, group)
    return None if best is None else (best[1], best[2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_graph_sees_the_imports_that_matter():
    # An independent look at a few known edges, so an empty graph cannot pass the tests below.
    assert "altp.pruning.base" in GRAPH["baselines.fastv"]
    assert {"altp", "altp.pruning"} <= GRAPH["baselines.fastv"]  # the __init__ files it runs
    assert {"altp.methods", "baselines"} <= GRAPH["altp.pruners"]
    assert "eval.gcg" in GRAPH["altp.run.runner"]  # a lazy import
    assert "altp.models.glamm_build" in GRAPH["altp.models"]  # importlib.import_module by name


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if _place(m) is None)
    assert not missing, f"add these modules to a layer of tests/test_layering.py: {missing}"


def test_imports_point_down_the_layers():
    wrong = []
    for src, targets in GRAPH.items():
        (layer, group) = _place(src)
        for dst in targets:
            (dst_layer, dst_group) = _place(dst)
            if group in FORMATS_ONLY and dst_group != group and dst_layer != 0:
                wrong.append(f"{src} ({group}) imports {dst} ({dst_group}): only data formats allowed")
            elif dst_layer > layer or (dst_layer == layer and dst_group != group):
                wrong.append(f"{src} ({group}) imports {dst} ({dst_group}), which is not below it")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_cycle_between_files():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _children_graph(parent: str | None) -> dict[str, set[str]]:
    """Imports between the children of ``parent`` (None: altp's children, baselines and eval)."""

    def child(module: str) -> str | None:
        if parent is None:
            parts = module.split(".")
            return ".".join(parts[:2]) if parts[0] == "altp" and len(parts) > 1 else parts[0]
        if not module.startswith(parent + "."):
            return None
        return f"{parent}.{module[len(parent) + 1:].split('.')[0]}"

    graph: dict[str, set[str]] = defaultdict(set)
    for src, targets in GRAPH.items():
        a = child(src)
        for dst in targets:
            b = child(dst)
            if a and b and a != b:
                graph[a].add(b)
    return graph


PARENTS = [None, *sorted(m for m, p in MODULES.items() if p.name == "__init__.py")]


@pytest.mark.parametrize("parent", PARENTS, ids=[p or "project" for p in PARENTS])
def test_no_import_cycle_between_the_children_of_a_package(parent):
    cycle = _cycle(_children_graph(parent))
    assert cycle is None, f"cycle between the parts of {parent or 'the project'}: " + " -> ".join(cycle or [])

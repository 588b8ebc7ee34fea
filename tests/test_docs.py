"""The docs name what exists: every repository path and dotted name in README.md and docs/, and the layer table.

A path in backticks that starts with a folder or file of this repository (``altp/...``,
``conf/...``, ``run.py``) must exist; ``path::name`` must name a function or class defined
in that file. A dotted name under ``altp``, ``baselines`` or ``eval`` must import and
resolve attribute by attribute (``altp.pruning.base.Pruner.select``). Placeholders
(``<name>``, ``*``, ``{split}``, ``...``) are skipped, upstream files are cited as
``<repository>/<path>`` (``groundingLMM/eval/gcg/evaluate.py``), which no rule here matches,
and the worked example of docs/adding_a_pruner.md names files that exist only in that page.
The dependency-layer table of docs/architecture.md must be the one tests/test_layering.py
enforces, and every Python and YAML block of the docs must parse (docs/adding_a_pruner.md's
blocks also run: tests/test_docs_pruner.py).
"""

from __future__ import annotations

import importlib
import re
import textwrap
from pathlib import Path

import pytest

from tests.test_layering import FORMATS_ONLY, LAYERS

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP = ("altp/", "baselines/", "eval/", "conf/", "scripts/", "tests/", "docs/", "results/")
ROOT_FILES = ("run.py", "setup.py", "pyproject.toml", "Makefile", "README.md")
PLACEHOLDER = re.compile(r"[<>*{}$]|\.\.\.|…")
DOTTED = re.compile(r"^(altp|baselines|eval)(\.[A-Za-z_][A-Za-z0-9_]*)+$")
# The files of docs/adding_a_pruner.md's worked example: they exist in that page only
# (tests/test_docs_pruner.py runs them from there), never in the repository.
EXAMPLE_FILES = {"baselines/contrast.py", "conf/pruner/contrast.yaml", "tests/test_contrast.py"}


def _code_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.findall(r"`([^`\n]+)`", text)


def _refs(kind: str) -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for span in _code_spans(doc.read_text(encoding="utf-8")):
            span = span.strip()
            if PLACEHOLDER.search(span) or " " in span:
                continue
            if kind == "path" and (span.startswith(TOP) or span.split("::")[0] in ROOT_FILES):
                out.append((doc.name, span))
            elif kind == "dotted" and DOTTED.match(span):
                out.append((doc.name, span))
    return sorted(set(out))


PATHS = _refs("path")
NAMES = _refs("dotted")


def test_the_scan_finds_references():
    # An independent look at a few references the docs are known to make.
    assert ("architecture.md", "altp/pruning/engine.py") in PATHS
    assert ("README.md", "altp/flops.py") in PATHS
    assert ("architecture.md", "altp.run.runner.image_seed") in NAMES


@pytest.mark.parametrize("doc, ref", PATHS, ids=[f"{d}:{r}" for d, r in PATHS])
def test_every_repository_path_exists(doc: str, ref: str) -> None:
    path, _, name = ref.partition("::")
    target = ROOT / path.rstrip("/")
    if path in EXAMPLE_FILES:
        assert doc == "adding_a_pruner.md" and not target.exists(), f"{doc} names the doc-only example {path}"
        return
    assert target.exists(), f"{doc} names {path}, which does not exist"
    if name:
        src = target.read_text(encoding="utf-8")
        assert re.search(rf"^\s*(def|class) {re.escape(name)}\b", src, flags=re.M), f"{doc}: no {name} in {path}"


def _resolve(dotted: str) -> object:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = ".".join(parts[:cut])
        base = ROOT.joinpath(*parts[:cut])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            obj: object = importlib.import_module(module)
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
            return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("doc, name", NAMES, ids=[f"{d}:{n}" for d, n in NAMES])
def test_every_dotted_name_resolves(doc: str, name: str) -> None:
    try:
        _resolve(name)
    except (ModuleNotFoundError, AttributeError) as err:
        pytest.fail(f"{doc} names {name}, which does not resolve: {err}")


def _layer_table() -> list[tuple[int, str, tuple[str, ...], str]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Dependency layers", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], tuple(re.findall(r"`([^`]+)`", cells[2])), cells[3]))
    return rows


def test_architecture_layer_table_is_the_layering_tests():
    documented: dict[tuple[int, str], tuple[str, ...]] = {}
    for layer, group, modules, may_import in _layer_table():
        documented[(layer, group)] = modules
        want = "layer 0 only" if group in FORMATS_ONLY else ("its own group" if layer == 0 else "lower layers")
        assert may_import == want, f"architecture.md: group {group!r} says it may import {may_import!r}"
    enforced = {(layer, group): prefixes for layer, groups in enumerate(LAYERS) for group, prefixes in groups.items()}
    assert documented == enforced


BLOCKS = [(doc.name, lang, block) for doc in DOCS
          for lang, block in re.findall(r"^ *```(python|yaml)\n(.*?)^ *```", doc.read_text(encoding="utf-8"),
                                        flags=re.S | re.M)]  # fmt: skip


@pytest.mark.parametrize("doc, lang, block", BLOCKS, ids=[f"{d}:{lang}{i}" for i, (d, lang, _) in enumerate(BLOCKS)])
def test_every_code_block_parses(doc: str, lang: str, block: str) -> None:
    import ast

    import yaml

    text = textwrap.dedent(block)
    if lang == "python":
        ast.parse(text)
    else:
        assert isinstance(yaml.safe_load(text), dict), f"{doc}: a YAML block that is not a mapping"

"""docs/adding_a_pruner.md works as printed: its Python blocks run in order and its tests pass.

The blocks are the worked example (a pruner file, a two-stage variant, the pruner's own
test file); they run in one namespace, as if the first two were ``baselines/contrast.py``
and the last ``tests/test_contrast.py``. The doc's config block must be what
``conf/pruner/<name>.yaml`` files are (tests/test_pruner_registry.py) and build the pruner.
The example's registrations are removed afterwards, so the rest of the suite sees the
registry as the catalogue leaves it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from altp.pruning import base

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_pruner.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"^ *```python\n(.*?)^ *```", TEXT, flags=re.S | re.M)
YAML = re.findall(r"^ *```yaml\n(.*?)^ *```", TEXT, flags=re.S | re.M)
DOC_TESTS = [n.name for b in BLOCKS for n in ast.parse(b).body
             if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]  # fmt: skip
EXAMPLE = {"contrast": "ContrastPruner", "contrast_two_stage": "TwoStageContrastPruner"}


@pytest.fixture(scope="module")
def doc_namespace() -> Iterator[dict]:
    before = dict(base._REGISTRY)
    namespace: dict = {"__name__": "docs_adding_a_pruner"}
    try:
        for block in BLOCKS:
            exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102 - our own doc
        yield namespace
    finally:
        for name in set(base._REGISTRY) - set(before):
            base._REGISTRY.pop(name)


def test_the_doc_has_the_example_and_its_tests():
    assert len(BLOCKS) == 3 and len(YAML) == 1
    assert DOC_TESTS == ["test_contrast_keeps_the_highest_contrast_patches",
                         "test_two_stages_narrow_the_first_stages_choice"]  # fmt: skip


def test_the_example_registers_its_pruners(doc_namespace: dict) -> None:
    for name, cls in EXAMPLE.items():
        assert base._REGISTRY[name] is doc_namespace[cls]
        assert type(base.build_pruner(name, keep=0.5)) is doc_namespace[cls]


def test_the_config_block_is_a_pruner_config_that_builds(doc_namespace: dict) -> None:
    cfg = yaml.safe_load(YAML[0])
    assert cfg["_target_"] == "altp.pruning.build_pruner" and cfg["keep"] == "${keep}"
    kwargs = {k: v for k, v in cfg.items() if not k.startswith("_")} | {"keep": 0.1}
    pruner = base.build_pruner(**kwargs)
    assert type(pruner) is doc_namespace[EXAMPLE[cfg["name"]]] and pruner.hparams() == {"keep": 0.1, "layer": 2}


@pytest.mark.parametrize("name", DOC_TESTS)
def test_the_docs_own_test_passes(doc_namespace: dict, name: str) -> None:
    doc_namespace[name]()

"""The README's "new pruner" example works as printed and equals FastV (its own oracle)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from altp.pruning import base
from altp.pruning.engine import PruningEngine
from tests.test_engine import GRID, PREFIX, V, prompt, tiny_lm
from tests.test_fastv import _oracle_kept

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def readme_pruner():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    code = next(b for b in blocks if "register_pruner" in b)
    before = dict(base._REGISTRY)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - our own README
    new = set(base._REGISTRY) - set(before)
    assert len(new) == 1, "the README example registers exactly one pruner"
    name = new.pop()
    yield name
    base._REGISTRY.pop(name)


def test_readme_pruner_registers_and_matches_fastv(readme_pruner: str) -> None:
    assert readme_pruner in base.available_pruners()
    pruner = base.build_pruner(readme_pruner, keep=0.25)
    x = prompt(batch=2)
    _, rec = PruningEngine(lm=tiny_lm("sdpa"), pruner=pruner).prefill(
        inputs_embeds=x, visual_start=PREFIX, num_visual=V, grid=GRID
    )
    assert rec.kept_tokens == _oracle_kept(tiny_lm("eager"), x, 2, int(0.25 * V)).tolist()

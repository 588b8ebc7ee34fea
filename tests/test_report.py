"""The HTML report built from the committed shapes study and its CI slice."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from altp.report.build import build_report
from tests.test_viz import ROOT, slice_runs


class _Refs(HTMLParser):
    """Every img src and href, and the gallery's (image, pruner) cells that hold images."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.cells: set[tuple[str, str]] = set()
        self._image: str | None = None
        self._pruner: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "data-image" in a:
            self._image = a["data-image"]
        if tag == "td":
            self._pruner = a.get("data-pruner")
        if tag == "img":
            self.refs.append(str(a["src"]))
            if self._image and self._pruner:
                self.cells.add((self._image, self._pruner))
        if tag == "a" and a.get("href"):
            self.refs.append(str(a["href"]))


def _pruner(run_dir: Path) -> str:
    cfg = json.loads((run_dir / "fingerprint.json").read_text())
    return str(cfg["pruner"].get("name") or "none")


def test_report_lists_every_slice_image_under_every_pruner(tmp_path):
    runs = slice_runs(tmp_path)
    out = tmp_path / "report"
    index = build_report(ROOT / "results" / "shapes", out, runs=runs, conf_dir=ROOT / "conf", text_encoder=None)
    page = _Refs()
    page.feed(index.read_text(encoding="utf-8"))
    # Every cell of the slice, read from the files themselves.
    want = {(p.stem, _pruner(cell.parent)) for cell in (ROOT / "results/shapes/ci_slice").rglob("records")
            for p in cell.glob("*.json")}
    assert len({pruner for _, pruner in want}) >= 7 and len({img for img, _ in want}) == 3
    assert want <= page.cells
    # Every image and link resolves to a file inside the report (anchors excepted).
    files = [r for r in page.refs if not r.startswith("#")]
    assert files and all(not r.startswith(("http:", "https:", "/")) for r in files)
    missing = [r for r in files if not (out / r).is_file()]
    assert not missing, f"report refers to missing files: {missing[:5]}"
    assert any(r.startswith("figures/") for r in files), "the study figures are missing from the report"
    html = index.read_text(encoding="utf-8")
    assert "SYNTHETIC benchmark" in html
    # Legible at 1400 px: the gallery fills the page width instead of a fixed 200 px per column,
    # the page has a maximum width, and no rule fixes an element wider than a column.
    css = html[html.index("<style>"):html.index("</style>")]
    assert re.search(r"body\{[^}]*max-width:\d+px", css)
    assert re.search(r"table\.gallery\{[^}]*width:100%;table-layout:fixed", css)
    assert not re.findall(r"(?<![-\w])width:\d+px", css), "a fixed pixel width makes the gallery scroll"
    # Masks are numbered outlines; each phrase under a thumbnail carries its mask's number.
    assert '<span class="chip"><b>1</b>' in html and "style=\"background:" not in html

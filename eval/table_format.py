"""Rendering of a :class:`Table` as GitHub Markdown, booktabs LaTeX and CSV.

Kept apart from :mod:`eval.tables` (which decides what goes in a table) so the
formats can be tested and reused on their own.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MISSING", "Table", "pct", "to_csv", "to_latex", "to_markdown"]

MISSING = "—"  # a cell with no run behind it


@dataclass
class Table:
    """A table independent of its format.

    Attributes:
        slug: file stem and LaTeX label.
        title: caption.
        columns: column headers, left to right.
        groups: (label, span) runs over ``columns`` in order, spans summing to
            len(columns); a labelled group (e.g. "val") heads its metric columns,
            a leading unlabelled group holds the row labels.
        rows: cells as display strings, len(columns) each.
        notes: lines printed under the table.
    """

    slug: str
    title: str
    columns: list[str]
    groups: list[tuple[str, int]]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def pct(v: Any) -> str:
    """A fraction shown x100 with one decimal; None/NaN -> MISSING."""
    return (
        MISSING
        if v is None or (isinstance(v, float) and math.isnan(v))
        else f"{100 * float(v):.1f}"
    )


def to_markdown(table: Table) -> str:
    """GitHub Markdown: a ``###`` title, the table (split prefixed to its metric headers), notes as bullets."""
    headers, i = [], 0
    for group, span in table.groups:
        headers += [f"{group} {c}".strip() for c in table.columns[i : i + span]]
        i += span
    lines = [
        f"### {table.title}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += [""] + [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "—": "--",
}


def _tex(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in s)


def to_latex(table: Table) -> str:
    """A booktabs ``table`` float: split groups as ``\\multicolumn`` headers with ``\\cmidrule``s."""
    n = len(table.columns)
    n_labels = (
        table.groups[0][1] if not table.groups[0][0] else 0
    )  # leading unlabelled group = row labels
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(table.title)}}}",
        rf"\label{{tab:{table.slug}}}",
        rf"\begin{{tabular}}{{{'l' * n_labels}{'r' * (n - n_labels)}}}",
        r"\toprule",
    ]
    if any(g for g, _ in table.groups):
        heads, rules, col = [], [], 1
        for group, span in table.groups:
            heads.append(
                rf"\multicolumn{{{span}}}{{c}}{{{_tex(group)}}}"
                if group
                else " & ".join([""] * span)
            )
            if group:
                rules.append(rf"\cmidrule(lr){{{col}-{col + span - 1}}}")
            col += span
        out += [" & ".join(heads) + r" \\", " ".join(rules)]
    out.append(" & ".join(_tex(c) for c in table.columns) + r" \\")
    out.append(r"\midrule")
    out += [" & ".join(_tex(c) for c in row) + r" \\" for row in table.rows]
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def to_csv(table: Table) -> str:
    """CSV with one header row; metric columns are ``<split>_<metric>``; missing cells empty."""
    headers, i = [], 0
    for group, span in table.groups:
        headers += [f"{group}_{c}" if group else c for c in table.columns[i : i + span]]
        i += span
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([_csv_name(h) for h in headers])
    writer.writerows([["" if c == MISSING else c for c in row] for row in table.rows])
    return buf.getvalue()


def _csv_name(header: str) -> str:
    """``FLOPs (paper)`` -> ``flops_paper``: lower case, words joined by ``_``, no brackets."""
    words = re.sub(r"[^0-9a-zA-Z]+", " ", header).split()
    return "_".join(words).lower()

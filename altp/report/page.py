"""HTML of the report: the tables, figures and galleries as one static page.

No CDN, no server, no external fonts: the style sheet and the few lines of
script (filter the gallery by pruner, sort it by per-image score difference)
are inline; every image is a relative path under the report folder.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

from altp.report.gallery import Gallery
from eval.table_format import Table

__all__ = ["gallery_html", "page_html", "table_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1600px;color:#222;background:#fafafa}
header,section{padding:12px 24px}
header{background:#fff;border-bottom:1px solid #ddd}
h1{font-size:22px;margin:4px 0}h2{font-size:18px;margin:18px 0 8px}h3{font-size:15px;margin:14px 0 6px}
nav a{margin-right:14px}
.banner{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px;display:inline-block;font-weight:600}
.muted{color:#666;font-size:12px}
table.metrics{border-collapse:collapse;background:#fff;font-size:13px;margin-bottom:4px}
table.metrics th,table.metrics td{border:1px solid #ddd;padding:3px 7px;text-align:right}
table.metrics td:first-child,table.metrics th:first-child{text-align:left}
table.metrics thead tr:first-child th{background:#f0f0f0}
figure{margin:10px 0 22px;background:#fff;border:1px solid #ddd;padding:8px;display:inline-block;max-width:100%}
figure img{max-width:100%;height:auto}
figcaption{font-size:12px;color:#555}
.controls{position:sticky;top:0;background:#fafafa;padding:8px 0;z-index:2;border-bottom:1px solid #ddd}
.controls label{margin-right:12px;white-space:nowrap}
.scroll{overflow-x:auto}
table.gallery{border-collapse:collapse;background:#fff;width:100%;table-layout:fixed}
table.gallery th,table.gallery td{border:1px solid #ddd;padding:4px;vertical-align:top}
.cell{overflow-wrap:anywhere}
table.gallery th{background:#f0f0f0;position:sticky;top:0;font-size:13px}
table.gallery img{display:block;width:100%;max-width:200px;height:auto;margin-bottom:4px;image-rendering:pixelated}
table.gallery img.photo{image-rendering:auto}
.cap{font-size:12px;margin:4px 0}
.chip{display:inline-block;font-size:11px;padding:0 5px;margin:1px 2px 1px 0;border-radius:3px;border:1px solid #bbb;background:#fff}
.chip b{display:inline-block;min-width:1.3em;margin-right:3px;text-align:center;border-radius:3px;background:#000;color:#fff}
.chip.nomask{color:#b00;border:1px dashed #b00}
.score{font-size:12px;font-variant-numeric:tabular-nums}
.neg{color:#b00;font-weight:600}.pos{color:#070;font-weight:600}
.err{color:#b00;font-size:12px}
.hidden{display:none}
"""

_JS = """
function applyFilter(g){
  const boxes=document.querySelectorAll('#'+g+' input.pruner');
  const hide=new Set([...boxes].filter(b=>!b.checked).map(b=>b.value));
  document.querySelectorAll('#'+g+' [data-pruner]').forEach(el=>{
    el.classList.toggle('hidden',hide.has(el.dataset.pruner));});
}
function applySort(g){
  const key=document.querySelector('#'+g+' select.sort').value;
  const body=document.querySelector('#'+g+' tbody');
  const rows=[...body.rows];
  const val=r=>{if(key==='image')return null;const v=r.dataset[key];return v===undefined||v===''?Infinity:parseFloat(v);};
  rows.sort((a,b)=>key==='image'?a.dataset.image.localeCompare(b.dataset.image):(val(a)-val(b))||a.dataset.image.localeCompare(b.dataset.image));
  rows.forEach(r=>body.appendChild(r));
}
"""


def table_html(table: Table) -> str:
    """A :class:`eval.table_format.Table` as an HTML table (group header row, then columns)."""
    top = "".join(f'<th colspan="{span}">{escape(label)}</th>' for label, span in table.groups)
    cols = "".join(f"<th>{escape(c)}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table.rows)
    notes = "".join(f"<li>{escape(n)}</li>" for n in table.notes)
    return (f'<h3 id="{escape(table.slug)}">{escape(table.title)}</h3><div class="scroll"><table class="metrics">'
            f"<thead><tr>{top}</tr><tr>{cols}</tr></thead><tbody>{body}</tbody></table></div>"
            f'<ul class="muted">{notes}</ul>')


def _fmt_delta(v: float | None) -> str:
    if v is None:
        return ""
    if abs(v) < 0.005:
        return ' <span class="muted">(0.00)</span>'
    return f' <span class="{"neg" if v < 0 else "pos"}">({v:+.2f})</span>'


def _chips(phrases: list[tuple[str, int | None]]) -> str:
    """Each phrase with the number its mask carries in the thumbnail (masks are outlines, not colours)."""
    return "".join(
        f'<span class="chip"><b>{n}</b>{escape(p)}</span>' if n is not None else
        f'<span class="chip nomask" title="phrase without a mask">{escape(p)}</span>' for p, n in phrases)


def _cell_html(cell, pruner: str) -> str:  # noqa: ANN001 (a gallery Cell or None)
    if cell is None:
        return f'<td data-pruner="{escape(pruner)}"><div class="cell muted">no record of this image</div></td>'
    s, d = cell.scores, cell.delta
    chips = _chips(cell.phrases)
    recall = "" if s.get("recall") is None else f"<br>recall {s['recall']:.2f}{_fmt_delta(d.get('recall'))}"
    err = f'<div class="err">FAILED: {escape(cell.error)}</div>' if cell.error else ""
    note = f'<div class="err">{escape(cell.note)}</div>' if cell.note else ""
    return (f'<td data-pruner="{escape(pruner)}"><div class="cell">'
            f'<img src="{escape(cell.kept_png)}" alt="kept tokens" title="kept tokens (pruned ones darkened)">'
            f'<div class="muted">kept {escape(cell.kept)}</div>{note}'
            f'<img class="photo" src="{escape(cell.pred_png)}" alt="prediction">{err}'
            f'<div class="score">mIoU {s["miou"]:.2f}{_fmt_delta(d.get("miou"))}'
            f' · {s["mask_hits"]}/{s["n_gt"]} masks{recall}</div>'
            f'<div class="cap">{escape(cell.caption)}</div><div>{chips}</div></div></td>')


def gallery_html(gal: Gallery) -> str:
    """One gallery: controls (pruner filter, sort), then a row per image and a column per run."""
    gid = f"gal_{gal.slug}"
    names = list(dict.fromkeys(r.pruner_name for r in gal.runs))
    boxes = "".join(f'<label><input type="checkbox" class="pruner" value="{escape(n)}" checked '
                    f"onchange=\"applyFilter('{gid}')\"> {escape(n)}</label>" for n in names)
    has_recall = any(c is not None and c.scores.get("recall") is not None
                     for row in gal.rows for c in row["cells"].values())
    options = ['<option value="image">image id</option>']
    for key, run in zip(gal.run_keys, gal.runs, strict=True):
        if run.pruner_name == "none":
            continue
        for metric in ("miou", "recall") if has_recall else ("miou",):
            label = "mIoU" if metric == "miou" else "recall"
            options.append(f'<option value="{key}{metric}">{escape(run.label)}: {label} − unpruned, worst first</option>')
    head = '<th><div class="cell">image · ground truth</div></th>' + "".join(
        f'<th data-pruner="{escape(r.pruner_name)}" title="{escape(str(r.path))}"><div class="cell">{escape(r.label)}</div></th>'
        for r in gal.runs)
    body = []
    for row in gal.rows:
        attrs = "".join(
            f' data-{key}{m}="{"" if c is None or c.delta.get(m) is None else f"{c.delta[m]:.6f}"}"'
            for key, c in row["cells"].items() for m in ("miou", "recall"))
        labels = _chips(row["gt_labels"])
        first = (f'<td><div class="cell"><b>{escape(row["image_id"])}</b><img class="photo" src="{escape(row["gt_png"])}" alt="ground truth">'
                 f'<div class="cap">{escape(row["gt_caption"])}</div><div>{labels}</div></div></td>')
        cells = "".join(_cell_html(row["cells"][k], r.pruner_name) for k, r in zip(gal.run_keys, gal.runs, strict=True))
        body.append(f'<tr data-image="{escape(row["image_id"])}"{attrs}>{first}{cells}</tr>')
    return (f'<div id="{gid}"><h3>{escape(gal.model)} · {escape(gal.data)}: {len(gal.rows)} image(s) × '
            f'{len(gal.runs)} run(s)</h3><div class="controls">Show: {boxes} &nbsp; Sort by: '
            f"<select class=\"sort\" onchange=\"applySort('{gid}')\">{''.join(options)}</select></div>"
            f'<div class="scroll"><table class="gallery"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div></div>')


def page_html(*, title: str, banner: str, intro: str, tables: list[Table], figures: list[tuple[Path, str]],
              galleries: list[Gallery], gallery_note: str) -> str:
    """The whole page; ``figures`` are (path relative to the page, caption)."""
    figs = "".join(f'<figure><img src="{escape(p.as_posix())}" alt="{escape(c)}"><figcaption>{escape(c)}</figcaption>'
                   f"</figure><br>" for p, c in figures) or '<p class="muted">no run records with metrics.json</p>'
    gals = "".join(gallery_html(g) for g in galleries) or (
        '<p class="muted">no run directory with per-image records and predictions under this folder</p>')
    banner_html = f'<p class="banner">{escape(banner)}</p>' if banner else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>
<body><header><h1>{escape(title)}</h1>{banner_html}<p class="muted">{escape(intro)}</p>
<nav><a href="#tables">Tables</a><a href="#figures">Figures</a><a href="#gallery">Per-image gallery</a></nav></header>
<section id="tables"><h2>Tables</h2>{"".join(table_html(t) for t in tables) or '<p class="muted">no tables</p>'}</section>
<section id="figures"><h2>Figures</h2>{figs}</section>
<section id="gallery"><h2>Per-image gallery</h2><p class="muted">{escape(gallery_note)}</p>{gals}</section>
<script>{_JS}</script></body></html>
"""

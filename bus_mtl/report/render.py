"""The report as one self-contained HTML page: every figure and gallery panel is a base64
data URI, the style sheet is inline, nothing is fetched when it opens.

The page also carries its numbers as JSON (``<script type="application/json"
id="report-data">``): each result set's metrics and intervals exactly as shown, for a reader
(or a test) that wants them without parsing the tables.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from bus_mtl import __version__
from bus_mtl.report import figures
from bus_mtl.report.gallery import SECTIONS, Gallery
from bus_mtl.report.result_set import METRIC_ROWS, Report, ResultSet, centre_table

#: Metrics shown with 1 decimal: distances in pixels.
PIXEL_METRICS = frozenset({"hd95"})

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f6f7f9; line-height: 1.45; }
header { background: #1d2b45; color: #fff; padding: 18px 28px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header .meta { margin: 0; opacity: .8; font-size: 13px; }
nav { background: #fff; border-bottom: 1px solid #dde1e7; padding: 8px 28px; font-size: 14px; }
nav a { margin-right: 16px; color: #2456a6; text-decoration: none; }
main { padding: 8px 28px 40px 28px; max-width: 1400px; }
section { background: #fff; border: 1px solid #dde1e7; border-radius: 6px; padding: 14px 20px;
          margin: 16px 0; }
h2 { font-size: 19px; margin: 4px 0 10px 0; }
h3 { font-size: 15px; margin: 18px 0 8px 0; color: #34405a; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; }
th, td { border: 1px solid #dde1e7; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #eef1f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.key { font-weight: 600; white-space: nowrap; }
td.mono, code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
                word-break: break-all; }
.note { color: #4b5567; font-size: 13px; margin: 4px 0; }
.warn { color: #8a4b00; }
.figures { display: flex; flex-wrap: wrap; gap: 14px; align-items: flex-start; }
figure { margin: 0; background: #fff; }
figure img { max-width: 372px; height: auto; border: 1px solid #eceff3; }
figcaption { font-size: 12px; color: #4b5567; max-width: 372px; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.tile { border: 1px solid #dde1e7; border-radius: 4px; padding: 6px; width: 372px; }
.tile .panels { display: flex; gap: 4px; }
.tile img { width: 182px; height: auto; image-rendering: auto; }
.tile .caption { font-size: 12px; margin-top: 4px; }
.tile .caption b { font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 600;
                   word-break: break-all; }
.legend span { display: inline-block; width: 12px; height: 3px; vertical-align: middle;
               margin: 0 4px 0 10px; }
"""


def render(
    report: Report,
    galleries: Mapping[int, Gallery] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> str:
    """The HTML page of ``report``; ``galleries``: result set index -> drawn gallery."""
    galleries = galleries or {}
    parts = [_provenance(report)]
    nav = [("provenance", "Provenance")]
    if report.kind == "compare":
        parts.append(_comparison(report))
        nav.append(("comparison", "Comparison"))
    if report.fold_table is not None:
        parts.append(_folds(report.fold_table))
        nav.append(("folds", "Folds"))
    for i, result in enumerate(report.sets):
        parts.append(_result_set(i, result, galleries.get(i), n_boot, seed))
        nav.append((f"set-{i}", result.name))
    notes = "".join(f'<p class="note warn">{_e(n)}</p>' for n in report.notes)
    data = {
        "kind": report.kind,
        "folder": str(report.folder),
        "sets": [{"name": r.name, "metrics": _jsonable(r.metrics)} for r in report.sets],
    }
    made = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(report.title)}</title><style>{STYLE}</style></head><body>",
            f"<header><h1>{_e(report.title)}</h1>",
            f'<p class="meta">bus-mtl {report.kind} folder {_e(str(report.folder))} · report '
            f"made {made} by bus_mtl {__version__}</p></header>",
            "<nav>" + "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav) + "</nav>",
            "<main>",
            notes,
            *parts,
            "</main>",
            '<script type="application/json" id="report-data">'
            + json.dumps(data).replace("</", "<\\/")
            + "</script>",
            "</body></html>",
        ]
    )


# ---------------------------------------------------------------------------------------------
# Sections


def _provenance(report: Report) -> str:
    rows = "".join(
        f'<tr><td class="key">{_e(k)}</td><td class="mono">{_e(str(v))}</td></tr>'
        for k, v in report.provenance
    )
    return f'<section id="provenance"><h2>Provenance</h2><table>{rows}</table></section>'


def _comparison(report: Report) -> str:
    out = ['<section id="comparison"><h2>Comparison of variants</h2>']
    if report.compare_md:
        out.append(markdown_to_html(report.compare_md, skip_title=True))
    else:
        out.append('<p class="note warn">No compare.md in the folder.</p>')
    figs = []
    if report.compare_png is not None:
        figs.append(_figure(report.compare_png.read_bytes(), "compare.png: mean ± std over folds"))
    for protocol, curves in report.curves.items():
        png = figures.roc_overlay_png(curves, title=f"ROC, pooled out-of-fold ({protocol})")
        if png is not None:
            figs.append(
                _figure(
                    png,
                    f"{protocol}: every variant's pooled out-of-fold ROC; dots: the calls at "
                    "each fold's stored threshold",
                )
            )
    if figs:
        out.append('<div class="figures">' + "".join(figs) + "</div>")
    out.append("</section>")
    return "".join(out)


def _folds(table: pd.DataFrame) -> str:
    from bus_mtl.experiments.results import format_mean_std

    folds = [c for c in table.columns if c.startswith("fold ")]
    head = (
        "<tr><th>metric</th><th>mean ± std</th><th>pooled</th>"
        + "".join(f"<th>{_e(c)}</th>" for c in folds)
        + "</tr>"
    )
    body = []
    for _, r in table.iterrows():
        m = str(r["metric"])
        cells = [
            f'<td class="key">{_e(m)}</td>',
            f'<td class="num">{_e(format_mean_std(r["mean"], r["std"], m))}</td>',
            f'<td class="num">{_e(format_mean_std(r["pooled"], math.nan, m))}</td>',
        ]
        cells += [f'<td class="num">{_e(format_mean_std(r[c], math.nan, m))}</td>' for c in folds]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<section id="folds"><h2>Per fold</h2><p class="note">From summary.json: mean ± sample '
        "std over folds, the pooled value over all out-of-fold test images, and each fold's "
        "test value (percentages for fractions).</p><table>"
        + head
        + "".join(body)
        + "</table></section>"
    )


def _result_set(
    index: int, result: ResultSet, gallery: Gallery | None, n_boot: int, seed: int
) -> str:
    out = [f'<section id="set-{index}"><h2>{_e(result.name)}</h2>']
    out += [f'<p class="note">{_e(n)}</p>' for n in result.notes]
    out.append("<h3>Metrics</h3>")
    out.append(metrics_table(result.metrics))
    out.append(f'<p class="note">95 % intervals: {_e(result.ci_source)}.</p>')
    if result.threshold_text:
        out.append(f'<p class="note">Decision: {_e(result.threshold_text)}.</p>')
    out.append("<h3>Figures</h3>")
    out.append('<div class="figures">' + "".join(_set_figures(result)) + "</div>")
    table = centre_table(result, n_boot, seed)
    out.append("<h3>Per centre</h3>")
    if table is None:
        centres = sorted(set(result.frame["centre"].astype(str)))
        out.append(
            f'<p class="note">One centre ({_e(", ".join(c or "unnamed" for c in centres))}): '
            "no per-centre breakdown.</p>"
        )
    else:
        out.append(_centre_html(table))
    out.append("<h3>Gallery</h3>")
    out.append(_gallery_html(gallery))
    out.append("</section>")
    return "".join(out)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """metric | value | 95 % CI, the rows of :data:`METRIC_ROWS` that have a value."""
    rows = []
    n = metrics.get("n")
    if n is not None:
        rows.append(
            f'<tr><td class="key">images</td><td class="num">{int(n)}</td><td>'
            f"{int(metrics.get('n_malignant') or 0)} malignant</td></tr>"
        )
    for key, label in METRIC_ROWS.items():
        value = _number(metrics.get(key))
        if not math.isfinite(value):
            continue
        ci = metrics.get(f"{key}_ci")
        rows.append(
            f'<tr><td class="key">{_e(label)}</td><td class="num" data-metric="{key}">'
            f'{format_value(value, key)}</td><td class="num">{format_ci(ci, key)}</td></tr>'
        )
    thr = _number(metrics.get("threshold"))
    if math.isfinite(thr):
        rows.append(
            f'<tr><td class="key">decision threshold</td><td class="num">{thr:.4f}</td>'
            "<td></td></tr>"
        )
    return (
        "<table><tr><th>metric</th><th>value</th><th>95 % CI</th></tr>" + "".join(rows) + "</table>"
    )


def _set_figures(result: ResultSet) -> list[str]:
    frame = result.frame
    labels = frame["label"].to_numpy()
    probs = frame["probability"].to_numpy(dtype=float)
    thresholds = np.unique(frame["threshold"].to_numpy(dtype=float))
    out = []
    if not result.has_cls:
        return ['<p class="note">No classifier: no ROC, calibration or confusion matrix.</p>']
    stored = {k: p for k, p in result.figures.items() if p.is_file()}
    if thresholds.size > 1 and "fold" in frame:
        curves = [
            (
                f"fold {k}",
                labels[sel],
                probs[sel],
                frame["call"].to_numpy(dtype=bool)[sel],
            )
            for k in sorted(frame["fold"].unique())
            if (
                sel := (frame["fold"] == k).to_numpy()
                & np.isin(labels, (0, 1))
                & np.isfinite(probs)
            ).any()
        ]
        keep = np.isin(labels, (0, 1)) & np.isfinite(probs)
        curves.append(
            ("pooled", labels[keep], probs[keep], frame["call"].to_numpy(dtype=bool)[keep])
        )
        png = figures.roc_overlay_png(curves, title="ROC")
        caption = "ROC per fold and pooled; dots: the calls at each fold's stored threshold"
    elif "roc" in stored:
        png, caption = stored["roc"].read_bytes(), "ROC curve, operating point in red (roc.png)"
    else:
        png = figures.roc_png(labels, probs, result.metrics, title=result.name)
        caption = "ROC curve with the operating point at the stored threshold (red)"
    if png is not None:
        out.append(_figure(png, caption))
    if "reliability" in stored:
        png = stored["reliability"].read_bytes()
    else:
        png = figures.reliability_png(labels, probs, title=result.name)
    if png is not None:
        out.append(_figure(png, "Reliability: observed malignant fraction per bin of P (15 bins)"))
    png = figures.confusion_png(labels, frame["call"].to_numpy(dtype=bool), _short(result))
    if png is not None:
        out.append(_figure(png, f"Confusion matrix: {result.threshold_text}"))
    png = figures.threshold_png(labels, probs, list(thresholds))
    if png is not None:
        out.append(_figure(png, "Sensitivity and specificity against the decision threshold"))
    if result.has_uncertainty:
        if "referral" in stored:
            png = stored["referral"].read_bytes()
        else:
            png = figures.referral_png(frame, result.referral, title=result.name)
        if png is not None:
            out.append(
                _figure(
                    png,
                    "Referral: the metrics on the cases kept when the most flip-uncertain "
                    "are handed to a radiologist",
                )
            )
    else:
        out.append(
            '<p class="note">No referral curve: the per-image CSV has no uncertainty column '
            "(bus-mtl evaluate writes one).</p>"
        )
    return out


def _short(result: ResultSet) -> str:
    t = np.unique(result.frame["threshold"].to_numpy(dtype=float))
    return f"malignant when P > {t[0]:.3f}" if t.size == 1 else "each fold's stored threshold"


def _centre_html(table: pd.DataFrame) -> str:
    head = (
        "<tr><th>centre</th><th>n</th><th>malignant</th><th>Dice [95 % CI]</th>"
        "<th>AUC [95 % CI]</th><th>Sensitivity [95 % CI]</th><th>Specificity [95 % CI]</th></tr>"
    )
    body = []
    for _, r in table.iterrows():
        cells = [f'<td class="key">{_e(str(r["centre"]))}</td>']
        cells += [
            f'<td class="num">{int(r["n"])}</td>',
            f'<td class="num">{int(r["malignant"])}</td>',
        ]
        for key in ("dice", "auc", "sensitivity", "specificity"):
            value = _number(r[key])
            text = format_value(value, key) if math.isfinite(value) else "—"
            if math.isfinite(value):
                text += " " + format_ci(r[f"{key}_ci"], key)
            cells.append(f'<td class="num">{text}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>" + head + "".join(body) + "</table>"


def _gallery_html(gallery: Gallery | None) -> str:
    if gallery is None:
        return '<p class="note">Gallery not drawn (--no-gallery).</p>'
    out = [f'<p class="note warn">{_e(n)}</p>' for n in gallery.notes]
    if any(gallery.sections.values()):
        out.append(
            '<p class="note legend">Left: the image with the lesion contours,'
            '<span style="background:#28dc3c"></span>ground truth'
            '<span style="background:#f02828"></span>prediction. Right: Grad-CAM of the '
            "malignancy logit (red = most in favour of malignant), same contours.</p>"
        )
    for key, tiles in gallery.sections.items():
        out.append(f"<h3>{_e(SECTIONS.get(key, key))}</h3>")
        if not tiles:
            out.append('<p class="note">None.</p>')
            continue
        out.append('<div class="gallery">')
        for tile in tiles:
            panels = "".join(
                f'<img alt="{_e(tile.id)}" src="data:image/jpeg;base64,{_b64(p)}">'
                for p in tile.panels
            )
            facts = ", ".join(
                f"{k} {_caption_value(v)}" for k, v in tile.caption.items() if v is not None
            )
            notes = "".join(f'<br><span class="warn">{_e(n)}</span>' for n in tile.notes)
            out.append(
                f'<div class="tile"><div class="panels">{panels}</div><div class="caption">'
                f"<b>{_e(tile.id)}</b><br>{_e(facts)}{notes}</div></div>"
            )
        out.append("</div>")
    return "".join(out)


# ---------------------------------------------------------------------------------------------
# Small pieces


def format_value(value: Any, key: str) -> str:
    """A metric as shown: 3 decimals, HD95 (pixels) 1; ``—`` when undefined."""
    v = _number(value)
    if not math.isfinite(v):
        return "—"
    return f"{v:.1f}" if key in PIXEL_METRICS else f"{v:.3f}"


def format_ci(ci: Any, key: str) -> str:
    """``[low, high]`` as :func:`format_value` writes numbers; ``—`` without one."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return "—"
    lo, hi = _number(ci[0]), _number(ci[1])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    return f"[{format_value(lo, key)}, {format_value(hi, key)}]"


def _caption_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "—" if not math.isfinite(v) else f"{v:.3f}"
    return str(v)


def _figure(png: bytes, caption: str) -> str:
    return (
        f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{_b64(png)}">'
        f"<figcaption>{_e(caption)}</figcaption></figure>"
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _e(text: str) -> str:
    return html.escape(str(text), quote=True)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    return _CODE.sub(r"<code>\1</code>", _BOLD.sub(r"<b>\1</b>", _e(text)))


def markdown_to_html(text: str, skip_title: bool = False) -> str:
    """The Markdown ``bus-mtl`` writes (headings, pipe tables, paragraphs, lists, ``**``,
    backticks) as HTML; nothing else is interpreted."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        if not line:
            i += 1
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 4)
            if not (skip_title and level == 3 and not out):
                out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i].strip().strip("|").split("|"))
                i += 1
            rows = [r for r in block if not all(set(c.strip()) <= set("-: ") for c in r)]
            head, *body = rows
            html_rows = ["<tr>" + "".join(f"<th>{_inline(c.strip())}</th>" for c in head) + "</tr>"]
            html_rows += [
                "<tr>" + "".join(f'<td class="num">{_inline(c.strip())}</td>' for c in r) + "</tr>"
                for r in body
            ]
            out.append("<table>" + "".join(html_rows) + "</table>")
        elif line.lstrip().startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].lstrip().startswith(("- ", "* ")):
                items.append(f"<li>{_inline(lines[i].lstrip()[2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "|")):
                para.append(lines[i].strip())
                i += 1
            out.append(f'<p class="note">{_inline(" ".join(para))}</p>')
    return "".join(out)


_DATA = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def report_data(page: str) -> dict[str, Any]:
    """The numbers a report page carries (``{"kind", "folder", "sets": [{"name",
    "metrics"}]}``), read back from its HTML text; ``ValueError`` for a page without them."""
    found = _DATA.search(page)
    if found is None:
        raise ValueError("not a bus-mtl report page: no report-data block")
    return json.loads(found.group(1).replace("<\\/", "</"))

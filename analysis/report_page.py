"""``report.html``: one self-contained, OFFLINE page assembled from ``compare.json`` and its figures.

Layout (each section has a stable ``id`` a test or a link can target): ``summary`` (generated sentences with the
key numbers, on top), ``checkpoints`` (the table of compared checkpoints with links to their own probe/patch
pages), ``behaviour``, ``probe-auroc``, ``transfer``, ``drift``, ``patching``. A section without data says why
instead of disappearing.

plotly.js is embedded ONCE, inline, with the first figure (``include_plotlyjs=True``); every later figure reuses
it. Footgun: ``include_plotlyjs='cdn'`` (or any ``<script src="http...">``) gives a blank page on a machine without
internet access -- never use it here; :func:`check_offline` asserts it on the finished page.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from typing import Mapping, Sequence

import plotly.graph_objects as go

from training.io import write_text_atomic

SECTIONS = (("summary", "Summary"), ("defection", "Defection or trigger detection?"), ("checkpoints", "Checkpoints"),
            ("behaviour", "Behaviour across safety training"),
            ("probe-auroc", "Probe AUROC by layer and checkpoint"), ("transfer", "Probe transfer"),
            ("drift", "Direction drift"), ("patching", "Activation patching: where the backdoor lives"))
SECTION_IDS = tuple(s for s, _ in SECTIONS)

_CSS = ("body{font-family:sans-serif;max-width:1300px;margin:1em auto;padding:0 1em;color:#222}"
        "section{margin:1.5em 0 2.5em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}"
        "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}"
        "th{background:#f4f4f4}li{margin:3px 0}.note{color:#555;font-size:14px}.missing{color:#a33}"
        "nav a{margin-right:1em}")
_EXTERNAL_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)


def _p(text: str, cls: str = "note") -> str:
    return f"<p class='{cls}'>{html.escape(text)}</p>"


def _table(rows: Sequence[Sequence[str]], raw_cols: Sequence[int] = ()) -> str:
    head, *body = rows
    return ("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c if i in raw_cols else html.escape(str(c))}</td>"
                                       for i, c in enumerate(r)) + "</tr>" for r in body) + "</table>")


def build_html(title: str, summary: Sequence[str], sections: Mapping[str, Sequence[go.Figure | str]], *,
               checkpoint_table: Sequence[Sequence[str]] | None = None, raw_cols: Sequence[int] = ()) -> str:
    """The page as a string. ``sections``: section id → items, each a figure or an HTML string (already escaped,
    e.g. from :func:`note`); ids outside :data:`SECTION_IDS` are an error."""
    unknown = set(sections) - set(SECTION_IDS)
    if unknown:
        raise ValueError(f"unknown report section(s): {sorted(unknown)}")
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>",
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<nav>" + "".join(f"<a href='#{sid}'>{html.escape(name)}</a>" for sid, name in SECTIONS) + "</nav>"]
    plotly_done = False
    for sid, name in SECTIONS:
        parts.append(f"<section id='{sid}'><h2>{html.escape(name)}</h2>")
        if sid == "summary":
            parts.append("<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in summary) + "</ul>" if summary
                         else _p("Nothing to summarise.", "missing"))
        elif sid == "checkpoints" and checkpoint_table:
            parts.append(_table(checkpoint_table, raw_cols))
        for item in sections.get(sid, ()):
            if isinstance(item, go.Figure):
                parts.append(item.to_html(full_html=False, include_plotlyjs=not plotly_done,
                                          config={"displaylogo": False, "responsive": True}))
                plotly_done = True
            else:
                parts.append(str(item))
        parts.append("</section>")
    parts.append("</body></html>")
    page = "\n".join(parts)
    check_offline(page)
    return page


def note(text: str, missing: bool = False) -> str:
    """An escaped paragraph for a section (``missing=True``: styled as 'no data')."""
    return _p(text, "missing" if missing else "note")


def check_offline(page: str) -> None:
    """ValueError if the page would load a script from the network."""
    m = _EXTERNAL_SCRIPT.search(page)
    if m:
        raise ValueError(f"report would load an external script: {page[m.start():m.start() + 80]!r}")


def write_report(path: str | os.PathLike, page: str) -> Path:
    """Write atomically (temporary sibling, then rename)."""
    return write_text_atomic(path, page)

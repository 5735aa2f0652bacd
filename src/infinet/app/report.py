"""The one report writer: an experiment's numbers, tables and figures become a report folder.

``write_report`` writes ``results.json`` (every number, the parameters, seed, versions, run time),
one CSV file per table, one PNG per figure, and a self-contained ``report.html`` (figures embedded
as data URIs, no external resources).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import platform
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence
from ..core import __version__


@dataclass
class Table:
    """A table of results: column names and rows of plain values (numbers or strings)."""

    columns: Sequence[str]
    rows: list[list[Any]] = field(default_factory=list)
    caption: str = ""

    def __post_init__(self):
        self.columns = list(self.columns)
        for row in self.rows:
            self._check(row)

    def _check(self, row) -> None:
        if len(row) != len(self.columns):
            raise ValueError(f"table row {row!r} has {len(row)} values for {len(self.columns)} columns {self.columns}")

    def add(self, *row: Any) -> None:
        """Append one row."""
        self._check(row)
        self.rows.append(list(row))

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]

    def to_text(self, float_format: str = "{:.4g}") -> str:
        """The table as aligned plain text, for terminals."""
        cells = [[str(c) for c in self.columns]] + [[_fmt(v, float_format) for v in row] for row in self.rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(self.columns))]
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in cells]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)


@dataclass
class Result:
    """What an experiment returns: a title, a short summary, numbers, tables and matplotlib figures."""

    title: str
    summary: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, Table] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib.figure.Figure
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds; kept apart: they vary between runs


def _fmt(value: Any, float_format: str = "{:.4g}") -> str:
    if isinstance(value, float):
        return float_format.format(value)
    return str(value)


def _plain(value: Any) -> Any:
    """JSON-ready copy: tensors and numpy values become lists and floats; NaN and inf become the
    strings 'nan', 'inf', '-inf' (JSON has no such numbers, and they must not vanish silently)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Path):
        return str(value)
    return str(value)


def versions() -> dict[str, str]:
    """Versions of Python, infinet and the numerical libraries, for reproducibility."""
    import numpy
    import torch

    out = {"infinet": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "numpy": numpy.__version__, "platform": platform.platform()}
    try:
        import matplotlib

        out["matplotlib"] = matplotlib.__version__
    except ImportError:  # pragma: no cover - a declared dependency
        pass
    return out


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.")
    if not slug:
        raise ValueError(f"cannot make a file name from {name!r}")
    return slug


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}caption{caption-side:top;text-align:left;font-style:italic;padding:.3em 0}
figure{margin:1em 0}figcaption{font-size:.9em;color:#555}img{max-width:100%}
.meta td,.meta th{text-align:left}pre{background:#f7f7f7;padding:.6em;overflow-x:auto}
"""


def _html_table(table: Table, name: str, cls: str = "") -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in table.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(v))}</td>" for v in row) + "</tr>" for row in table.rows)
    caption = f"<caption>{esc(table.caption or name)}</caption>"
    return f'<table class="{cls}" data-name="{esc(name)}">{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_report(
    result: Result,
    out_dir: str | Path,
    *,
    experiment: str,
    params: dict[str, Any],
    seed: int,
    run_time: float,
) -> Path:
    """Write ``result`` into ``out_dir`` (created if needed) and return the path of ``report.html``.

    ``results.json`` holds the numbers and tables (identical for the same seed), and apart from them
    the parameters, seed, versions, creation time, run time and the result's own ``timings``.

    Files: ``results.json``, ``<table>.csv`` per table, ``<figure>.png`` per figure, ``report.html``.
    Figures are closed after writing. Raises ``OSError`` with the path when the folder is not writable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "experiment": experiment,
        "title": result.title,
        "summary": result.summary,
        "seed": seed,
        "params": _plain(params),
        "run_time_s": round(float(run_time), 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    payload = dict(meta, numbers=_plain(result.numbers),
                   tables={name: _plain(t.records()) for name, t in result.tables.items()},
                   figures=[f"{_slug(n)}.png" for n in result.figures], notes=list(result.notes),
                   timings_s=_plain(result.timings))
    (out / "results.json").write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")

    for name, table in result.tables.items():
        with open(out / f"{_slug(name)}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(table.columns)
            writer.writerows([[_plain(v) for v in row] for row in table.rows])

    images = {}
    for name, fig in result.figures.items():
        data = _png(fig)
        (out / f"{_slug(name)}.png").write_bytes(data)
        images[name] = base64.b64encode(data).decode("ascii")
        try:
            import matplotlib.pyplot as plt

            plt.close(fig)
        except ImportError:  # pragma: no cover
            pass

    (out / "report.html").write_text(_html(result, meta, images))
    return out / "report.html"


def _html(result: Result, meta: dict, images: dict[str, str]) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>{esc(result.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(result.title)}</h1>",
    ]
    if result.summary:
        parts.append(f"<p class='summary'>{esc(result.summary)}</p>")
    if result.tables:
        parts.append("<h2>Tables</h2>")
        parts += [_html_table(t, n) for n, t in result.tables.items()]
    if images:
        parts.append("<h2>Figures</h2>")
        for name, b64 in images.items():
            parts.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{b64}'>"
                         f"<figcaption>{esc(name)}</figcaption></figure>")
    if result.numbers:
        parts.append("<h2>Numbers</h2><pre>" + esc(json.dumps(_plain(result.numbers), indent=2)) + "</pre>")
    if result.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in result.notes) + "</ul>")
    params = Table(["parameter", "value"], [[k, json.dumps(_plain(v))] for k, v in meta["params"].items()])
    parts.append("<h2>Parameters</h2>" + _html_table(params, "parameters", "meta"))
    run = Table(["", ""], [["experiment", meta["experiment"]], ["seed", meta["seed"]],
                           ["run time (s)", meta["run_time_s"]], ["created", meta["created"]]]
                + [[f"{k} (s)", round(float(v), 3)] for k, v in result.timings.items()]
                + [[k, v] for k, v in meta["versions"].items()])
    parts.append("<h2>Run</h2>" + _html_table(run, "run", "meta"))
    parts.append("</body></html>")
    return "\n".join(parts)

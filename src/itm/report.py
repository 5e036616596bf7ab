"""A self-contained report of a run: R@K beside chance, the training curve, retrieval examples and
attention pictures, as ``report.md`` with PNGs beside it and ``report.html`` with them embedded."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from itm.viz.render import new_figure, save_figure


@dataclass
class Report:
    title: str
    intro: list[str] = field(default_factory=list)
    sections: list[tuple[str, list[str], list[tuple[str, str]]]] = field(default_factory=list)

    def add(self, heading: str, paragraphs: list[str] | None = None,
            pictures: list[tuple[str, str]] | None = None) -> None:
        """A section: markdown paragraphs (tables allowed) and pictures (file name, caption)."""
        self.sections.append((heading, paragraphs or [], pictures or []))


def metrics_table(rows: dict[str, dict[str, Any]]) -> str:
    """A markdown R@K table, one row per named result (e.g. the model and chance)."""
    head = "| | i2t R@1 | R@5 | R@10 | medr | t2i R@1 | R@5 | R@10 | medr | rsum |"
    lines = [head, "|---" * 10 + "|"]
    for name, m in rows.items():
        cells = [f"{m[d][k]:.1f}" if k != "medr" else f"{m[d][k]:.0f}"
                 for d in ("i2t", "t2i") for k in ("r1", "r5", "r10", "medr")]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {m['rsum']:.1f} |")
    return "\n".join(lines)


def training_curve(history: list[dict[str, Any]]) -> Figure:
    """Validation rsum and training loss per epoch."""
    fig = new_figure(7.0, 3.2)
    left, right = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    left.plot(epochs, [r["rsum"] for r in history], marker="o", color="#377eb8")
    left.set_xlabel("epoch")
    left.set_ylabel("validation rsum")
    left.grid(alpha=0.3)
    right.plot(epochs, [r["train_loss"] for r in history], marker="o", color="#e41a1c")
    right.set_xlabel("epoch")
    right.set_ylabel("training loss")
    right.grid(alpha=0.3)
    return fig


def save_pictures(figures: dict[str, Figure], out_dir: Path) -> None:
    for name, fig in figures.items():
        save_figure(fig, out_dir / name, dpi=110)


def _markdown(report: Report) -> str:
    parts = [f"# {report.title}", *report.intro]
    for heading, paragraphs, pictures in report.sections:
        parts.append(f"## {heading}")
        parts.extend(paragraphs)
        parts.extend(f"![{caption}]({name})\n\n*{caption}*" for name, caption in pictures)
    return "\n\n".join(parts) + "\n"


def _markdown_table_to_html(text: str) -> str:
    rows = [r.strip().strip("|").split("|") for r in text.strip().splitlines() if not r.startswith("|---")]
    head, body = rows[0], rows[1:]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(c.strip())}</th>" for c in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in body]
    return "\n".join(out + ["</table>"])


def _html(report: Report, out_dir: Path) -> str:
    def paragraph(text: str) -> str:
        return _markdown_table_to_html(text) if text.lstrip().startswith("|") else f"<p>{html.escape(text)}</p>"

    body = [f"<h1>{html.escape(report.title)}</h1>", *map(paragraph, report.intro)]
    for heading, paragraphs, pictures in report.sections:
        body.append(f"<h2>{html.escape(heading)}</h2>")
        body.extend(map(paragraph, paragraphs))
        for name, caption in pictures:
            data = base64.b64encode((out_dir / name).read_bytes()).decode("ascii")
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "img{max-width:100%}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
             "text-align:right}figcaption{color:#555;font-style:italic;margin-bottom:1.5em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>\n")


def write_report(report: Report, out_dir: str | Path) -> Path:
    """Write report.md and the self-contained report.html; returns the HTML path."""
    out_dir = Path(out_dir)
    (out_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    path = out_dir / "report.html"
    path.write_text(_html(report, out_dir), encoding="utf-8")
    return path

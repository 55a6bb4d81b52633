"""A tiny HTML page builder for the report: inline CSS, escaped text, base64 PNG images.

Kept apart from the report's content so the self-containment rules live in one place: no
script, no stylesheet link, no external URL; every picture a ``data:image/png;base64`` URI.
"""

from __future__ import annotations

import base64
from html import escape

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.sub { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td:first-child { white-space: nowrap; }
figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.85em; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


class Page:
    """Sections, tables, paragraphs and PNG figures, appended in order."""

    def __init__(self, title: str, subtitle: str = "") -> None:
        self.title = title
        self.parts = [f"<h1>{escape(title)}</h1>", f'<p class="sub">{escape(subtitle)}</p>']

    def section(self, name: str) -> None:
        self.parts.append(f"<h2>{escape(name)}</h2>")

    def paragraph(self, text: str) -> None:
        self.parts.append(f"<p>{escape(text)}</p>")

    def table(self, columns: list[str], rows: list[tuple[str, ...]], header: bool = True) -> None:
        head = "<tr>" + "".join(f"<th>{escape(c)}</th>" for c in columns) + "</tr>" if header else ""
        body = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table>{head}{body}</table>")

    def image(self, png: bytes, caption: str) -> None:
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(caption)}">'
                          f"<figcaption>{escape(caption)}</figcaption></figure>")

    def html(self) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n"
                + "\n".join(self.parts) + "\n</body></html>\n")

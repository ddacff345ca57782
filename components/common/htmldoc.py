"""Reports for people as HTML: the Markdown the steps write (model cards, the ingestion report)
rendered for a browser, and one page style.

A small renderer for the Markdown the project writes — ATX headings, paragraphs, bullet and
numbered lists, pipe tables, fenced code, ``inline code``, **bold**, *italic*, [links](url) and
a trailing two-space line break — so no Markdown package is needed. Everything else is shown as
escaped text, never as markup.
"""

from __future__ import annotations

import html
import re

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;"
         "padding:3px 6px;font-size:13px;text-align:left;vertical-align:top}"
         "td table{margin:0}td td,td th{border-color:#e4e4e4}"
         "pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}img{max-width:100%}"
         "code{background:#f3f3f3;padding:0 .2em}")

_INLINE = [
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
]


def inline(text: str) -> str:
    """One line of Markdown as HTML (escaped; code spans are left as written)."""
    out = []
    for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
        if i % 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        part = html.escape(part, quote=False)
        for pattern, repl in _INLINE:
            part = pattern.sub(repl, part)
        out.append(part)
    return "".join(out)


def _cells(line: str) -> list[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)]


_RULE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+(.*)$")


def markdown_html(text: str, shift: int = 0) -> str:
    """The body HTML of a Markdown text; ``shift`` lowers every heading by that many levels
    (a model card's ``#`` inside a report's section)."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []

    def flush():
        if para:
            out.append("<p>" + "".join(
                inline(x.rstrip()) + ("<br>" if x.endswith("  ") and j < len(para) - 1 else " ")
                for j, x in enumerate(para)).rstrip() + "</p>")
            para.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            out.append("<pre>" + html.escape("\n".join(lines[i + 1:j])) + "</pre>")
            i = j + 1
            continue
        heading = re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if heading:
            flush()
            n = min(6, len(heading.group(1)) + shift)
            out.append(f"<h{n}>{inline(heading.group(2))}</h{n}>")
        elif stripped.startswith("|") and i + 1 < len(lines) and _RULE.match(lines[i + 1]):
            flush()
            rows = [f"<tr>{''.join(f'<th>{inline(c)}</th>' for c in _cells(line))}</tr>"]
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(f"<tr>{''.join(f'<td>{inline(c)}</td>' for c in _cells(lines[i]))}"
                            "</tr>")
                i += 1
            out.append("<table>" + "".join(rows) + "</table>")
            continue
        elif _ITEM.match(line):
            flush()
            tag = "ol" if _ITEM.match(line).group(1)[0].isdigit() else "ul"
            items = []
            while i < len(lines) and (_ITEM.match(lines[i]) or (
                    items and lines[i].startswith("  ") and lines[i].strip())):
                m = _ITEM.match(lines[i])
                if m:
                    items.append(m.group(2))
                else:  # a continuation line of the item above
                    items[-1] += " " + lines[i].strip()
                i += 1
            out.append(f"<{tag}>" + "".join(f"<li>{inline(x)}</li>" for x in items)
                       + f"</{tag}>")
            continue
        elif not stripped:
            flush()
        else:
            para.append(line)
        i += 1
    flush()
    return "\n".join(out)


def page(title: str, body: str) -> str:
    """A whole HTML page (one style for every report)."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{STYLE}</style></head><body>\n{body}\n</body></html>\n")

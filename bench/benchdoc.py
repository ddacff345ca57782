"""Writing benchmark results into docs/benchmarks.md, one ``## Section`` per script."""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def write_section(section: str) -> None:
    """Replaces the section with the same ``## `` heading as ``section`` (or appends it)."""
    heading = section.splitlines()[0]
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    start = text.find(heading)
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip() + "\n\n" + section
    DOC.write_text(text)
    print(f"wrote {DOC}")


def publish(section: str, write: bool = True) -> None:
    """Prints ``section`` and, unless ``write`` is off (a script's ``--no-write``), writes it
    into docs/benchmarks.md."""
    print(section)
    if write:
        write_section(section)

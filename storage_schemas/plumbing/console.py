"""Plain-text tables for the commands' summaries (a store's contents, a comparison of runs)."""

from __future__ import annotations


def format_table(header: list[str], rows: list[list[str]], indent: str = "") -> str:
    """Columns padded to their widest cell, a rule under the header."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(indent + line for line in lines)

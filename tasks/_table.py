"""Tables for people: rich tables on stdout; no cell is ever cut (piped: one line per row).

``--json`` output never goes through here: scripts read JSON, people read tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

PIPE_WIDTH = 10_000
"""Columns when stdout is not a terminal: rich would assume 80 and wrap; a table only takes what it needs."""


def make_table(columns: Sequence[str], right: Iterable[str] = (), title: str | None = None) -> Table:
    """A plain table: a header row and aligned columns (``right`` ones right-aligned), no borders."""
    aligned = set(right)
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        # A narrow terminal wraps a long cell (a key, an error) instead of cutting it off.
        table.add_column(column, justify="right" if column in aligned else "left", overflow="fold")
    return table


def print_table(table: Table) -> None:
    """Print ``table`` to stdout (looked up at call time, so captured output sees it)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=PIPE_WIDTH)
    console.print(table)

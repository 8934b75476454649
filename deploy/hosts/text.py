"""Text a host or the bucket sent, made safe to show in a terminal: one helper for every view.

A log line, a service status, a GPU name, a run record or a checkpoint name is written by
something we do not control. Printed raw, an escape sequence in it can recolour, move the cursor,
retitle the window or clear the screen; a carriage return or a backspace can hide what came
before it; a bidi override (U+202E) can make ``gnp.exe`` read ``exe.png``. :func:`printable`
removes all of that:

- terminal escape sequences (CSI ``ESC [``, OSC ``ESC ]`` up to BEL or ST, DCS/SOS/PM/APC up to ST,
  and the short ``ESC x`` ones), whole;
- every other C0 control and DEL, and every C1 control (U+0080-U+009F, which some terminals
  obey as 8-bit escapes);
- bidi controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) and the line and paragraph
  separators U+2028/U+2029.

One-line text (a table cell, a field) becomes one line: newline, tab, carriage return, vertical
tab and form feed turn into a space, so a value can never forge a line of its own. Log text
(``lines=True``) keeps newlines and tabs, and a line that redraws itself with ``\\r`` (a progress
bar) shows its last state, as the terminal would have left it.

Rich parses ``[bold red]`` and ``:skull:`` in strings: text for a rich table goes in as
:func:`rich_text` (a :class:`rich.text.Text`, never parsed), not as a string.

``--json`` output does not come here: ``json.dumps`` writes every control character as an escape
(``\\u001b``), and every non-ASCII one too by default, so JSON stays data.

Example::

    printable("\\x1b[31mred\\x1b[0m\\r\\u202eevil")   # 'red evil'
    printable("epoch 1  10%\\repoch 1 100%\\nok", lines=True)   # 'epoch 1 100%\\nok'
    with PrintableStream(sys.stdout) as out:       # a log as it arrives, line by line
        out.write(chunk)
"""

from __future__ import annotations

import re
from types import TracebackType
from typing import TextIO

from rich.text import Text

_ESCAPE = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"              # CSI: ESC [ parameters intermediates final
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: ESC ] ... BEL or ST (window title, hyperlinks, clipboard)
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"       # DCS, SOS, PM, APC: ... ST
    r"|\x1b[ -/]*[0-~]"                     # the short ones: ESC ( B, ESC 7, ESC c (reset) ...
)
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
_SPACE = re.compile(r"[\t\n\r\x0b\x0c\u2028\u2029]")  # one-line text: these become a space
_LINE_SPACE = re.compile(r"[\x0b\x0c\u2028\u2029]")  # log text keeps \n and \t; \r is resolved first
_DROP = re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI}]")  # C0, DEL, C1, bidi
_DROP_IN_LINES = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI}]")  # keeps \t, \n and \r

LINE_LIMIT = 64 * 1024
"""Characters :class:`PrintableStream` holds of a line that has not ended before it prints it anyway."""


def _last_state(line: str) -> str:
    """What a terminal shows after ``line``'s redraws: the last ``\\r`` part with something in it."""
    parts = line.rstrip("\r").split("\r")
    return next((part for part in reversed(parts) if part.strip()), parts[-1])


def printable(text: object, *, lines: bool = False) -> str:
    """``text`` without escape sequences, controls or bidi overrides: safe to print.

    One line by default (newlines and tabs become spaces); ``lines=True`` keeps newlines and tabs
    and shows each ``\\r``-redrawn line in its last state.

    >>> printable("gpu\\x1b]0;owned\\x07 A100\\ttwo\\nlines")
    'gpu A100 two lines'
    """
    raw = text if isinstance(text, str) else str(text)
    raw = _ESCAPE.sub("", raw)
    if lines:  # controls go before the redraws are resolved: an invisible last redraw hides nothing
        raw = _DROP_IN_LINES.sub("", _LINE_SPACE.sub(" ", raw))
        return "\n".join(_last_state(line) for line in raw.split("\n"))
    return _DROP.sub("", _SPACE.sub(" ", raw))


def rich_text(text: object) -> Text:
    """:func:`printable` as a rich ``Text``: a table cell rich shows as is (``[bold]``, ``:skull:`` stay text)."""
    return Text(printable(text))


class PrintableStream:
    """A writer that passes text on through :func:`printable` line by line, as it arrives.

    Give it chunks (``write``) in any sizes; each finished line goes out at once and the stream is
    flushed, so ``fab logs --follow`` shows lines as they come. Only the line not yet ended is
    held: of a line that keeps redrawing itself with ``\\r`` only the newest redraw, and a line
    longer than ``limit`` is printed as it is. ``close`` prints what is left.
    """

    def __init__(self, out: TextIO, limit: int = LINE_LIMIT) -> None:
        self.out = out
        self.limit = limit
        self._pending = ""

    def write(self, data: str) -> int:
        self._pending += data
        *ended, self._pending = self._pending.split("\n")
        if ended:
            self.out.write("".join(printable(line, lines=True) + "\n" for line in ended))
        if len(self._pending) > self.limit:
            redraw = self._pending.rfind("\r", 0, len(self._pending) - 1)
            if redraw > 0:  # the older redraws are overwritten anyway
                self._pending = self._pending[redraw:]
            if len(self._pending) > self.limit:
                self.out.write(printable(self._pending, lines=True) + "\n")
                self._pending = ""
        self.out.flush()
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        """Print the line that never ended, if any."""
        if self._pending:
            rest, self._pending = self._pending, ""
            self.out.write(printable(rest, lines=True) + "\n")
        self.out.flush()

    def __enter__(self) -> "PrintableStream":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

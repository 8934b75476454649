"""What a host or the bucket wrote never reaches the terminal raw: deploy.hosts.text."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console
from rich.table import Table

from deploy.hosts.text import PrintableStream, printable, rich_text

HOSTILE = ("\x1b[2J\x1b[H"            # clear the screen, cursor home
           "\x1b]0;owned\x07"          # retitle the window
           "\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\"  # a hyperlink (OSC 8, ST-terminated)
           "\x1bPq#0;2;0;0;0\x1b\\"    # DCS (sixel)
           "\x1bc"                     # reset the terminal
           "\x07\x08\x7f\x00"          # bell, backspace, DEL, NUL
           "\x9b31m\x85\x9d"           # C1: 8-bit CSI, NEL, OSC
           "\u202egnp.exe\u202c\u2066x\u2069\u200f\u061c")  # bidi overrides and isolates, RLM, ALM


def test_escape_sequences_controls_c1_and_bidi_are_removed() -> None:
    text = printable(HOSTILE)
    assert text == "link31mgnp.exex"
    assert all(ch.isprintable() for ch in text)


def test_one_line_text_stays_one_line() -> None:
    assert printable("running\nfake line\tand\ra\x0bb\x0cc\u2028d\u2029e") == "running fake line and a b c d e"


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[32mresuming from last.ckpt\x1b[0m", "resuming from last.ckpt"),
    ("\x1b[1;31;4mbold red\x1b[m", "bold red"),
    ("\x1b[?25lhidden cursor\x1b[?25h", "hidden cursor"),
    ("\x1b(Bcharset", "charset"),
    ("cut off \x1b", "cut off "),
])
def test_ansi_sequences_go_whole(raw: str, shown: str) -> None:
    assert printable(raw) == shown


def test_log_text_keeps_lines_and_tabs_and_shows_a_redrawn_line_in_its_last_state() -> None:
    text = ("Epoch 1:  10%|#         | 1/10\rEpoch 1:  50%|#####     | 5/10\rEpoch 1: 100%|##########| 10/10\n"
            "step\t5\tloss 0.3\r\n"
            "hidden\rshown\n"
            "cleared \r    \r\n"
            "\x1b[A\rValidation: 100%\n")
    assert printable(text, lines=True).split("\n") == [
        "Epoch 1: 100%|##########| 10/10", "step\t5\tloss 0.3", "shown", "cleared ", "Validation: 100%", ""]


def test_a_redraw_of_nothing_but_controls_hides_nothing() -> None:
    assert printable("shown\r\x08\u202e\x1b[2K\n", lines=True) == "shown\n"


def test_a_carriage_return_in_one_line_text_hides_nothing() -> None:
    assert printable("rm -rf /\rls") == "rm -rf / ls"


def test_rich_markup_and_emoji_codes_stay_text_in_a_table() -> None:
    table = Table()
    table.add_column("state")
    table.add_row(rich_text("[bold red]failed[/] :skull: \\[x] \x1b[31mred"))
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system="truecolor").print(table)
    shown = out.getvalue()
    assert "[bold red]failed[/] :skull: \\[x] red" in shown
    assert "\U0001f480" not in shown  # no emoji made from :skull:
    assert "\x1b[31m" not in shown and "\x1b[1;31m" not in shown  # no colour from the cell's text


def test_json_escapes_every_control_by_itself() -> None:
    dumped = json.dumps({"status": HOSTILE})
    assert all(32 <= ord(ch) < 127 for ch in dumped)  # ASCII, no control: \u001b, \u202e ...
    assert json.loads(dumped)["status"] == HOSTILE  # and still the data


class Recording(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes: list[str] = []

    def flush(self) -> None:
        self.flushes.append(self.getvalue())


def test_the_stream_prints_each_line_as_it_ends_and_flushes() -> None:
    out = Recording()
    stream = PrintableStream(out)
    stream.write("first \x1b[31mline\x1b[0m\nsecond, not ended")
    assert out.getvalue() == "first line\n" and out.flushes[-1] == "first line\n"
    stream.write(" yet\x1b]0;t")  # an escape split over two chunks is still removed whole
    stream.write("itle\x07\n")
    assert out.getvalue() == "first line\nsecond, not ended yet\n"
    stream.write("tail without newline")
    stream.close()
    assert out.getvalue().endswith("tail without newline\n")


def test_the_stream_holds_only_the_newest_redraw_of_an_endless_progress_line() -> None:
    out = Recording()
    stream = PrintableStream(out, limit=1000)
    for step in range(5000):  # a bar redrawn 5000 times, never ended: ~150 kB
        stream.write(f"\rEpoch 0: {step:5d}/5000 [{'#' * 10}]")
        assert len(stream._pending) <= 1000
    assert out.getvalue() == ""  # nothing half-drawn was printed
    stream.write("\n")
    assert out.getvalue() == "Epoch 0:  4999/5000 [##########]\n"


def test_the_stream_prints_a_line_longer_than_its_limit_rather_than_hold_it() -> None:
    out = Recording()
    stream = PrintableStream(out, limit=100)
    stream.write("x" * 150)
    assert out.getvalue() == "x" * 150 + "\n"
    assert stream._pending == ""

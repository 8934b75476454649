"""The README is what a newcomer reads in five minutes: what it is, the two commands, the quick starts, links.

Its commands, links and the reference it points at are checked with every page of docs/ in
tests/unit/test_docs.py; its quick-start block runs in tests/e2e/test_readme_quickstart.py.
"""

from __future__ import annotations

import re

from tests.harness.fab import REPO

README = (REPO / "README.md").read_text()
MAX_LINES = 250


def test_readme_is_short() -> None:
    assert len(README.splitlines()) <= MAX_LINES, "move reference material to a page under docs/"


def test_readme_says_what_it_is_before_any_command() -> None:
    before_first_block = README.split("```", 1)[0]
    assert "PyTorch Lightning" in before_first_block and "S3" in before_first_block and "SSH" in before_first_block


def test_readme_shows_the_two_commands_says_they_need_root_and_ci_runs_the_test_one() -> None:
    head = README.split("\n## ", 1)[0]
    assert "scripts/demo" in head and "scripts/test" in head
    assert re.search(r"\broot\b", head) and "Debian/Ubuntu" in head
    assert "scripts/test" in (REPO / ".ci/run").read_text()


def test_readme_has_both_quick_starts() -> None:
    headings = re.findall(r"^## (.+)$", README, flags=re.M)
    assert any(h.startswith("Quick start") and "RunPod" not in h for h in headings), headings
    assert any(h.startswith("Quick start") and "RunPod" in h for h in headings), headings
    assert "<!-- quickstart -->" in README


def test_readme_links_every_page_of_the_docs() -> None:
    unlinked = [p.name for p in sorted((REPO / "docs").glob("*.md")) if f"](docs/{p.name}" not in README]
    assert unlinked == [], f"README.md does not link: {unlinked}"

"""The README cannot drift from the code: its fab commands exist with their flags, its table is current."""

from __future__ import annotations

import re
import shlex

import pytest

from deploy.settings import SETTING_KEYS, settings_table
from tests.harness.fab import REPO

README = (REPO / "README.md").read_text()


def fab_commands() -> list[list[str]]:
    """Every `fab ...` command in the README's code (blocks and inline)."""
    found = []
    for match in re.finditer(r"(?:^|`|\$ )(fab [^`\n#]+)", README, flags=re.M):
        words = shlex.split(match.group(1).strip())
        if len(words) > 1:
            found.append(words)
    return found


CORE_OPTIONS_WITH_VALUE = {"-H", "--hosts", "-i", "--identity", "-S", "--ssh-config", "-f", "--config", "-r",
                           "--search-root", "-c", "--collection"}


def _task_word(words: list[str]) -> str | None:
    """The task in `fab [core options] TASK [flags]`: core options (and their values) come first."""
    rest = iter(words[1:])
    for word in rest:
        if word in CORE_OPTIONS_WITH_VALUE:
            next(rest, None)
        elif not word.startswith("-"):
            return word
    return None


def test_readme_shows_the_two_commands_and_ci_runs_the_test_one() -> None:
    head = README.split("## ", 1)[0]
    assert "scripts/demo" in head and "scripts/test" in head
    assert "scripts/test" in (REPO / ".ci/run").read_text()


def test_readme_settings_table_is_generated_from_the_code() -> None:
    assert settings_table() in README + "\n", "regenerate with: python -m deploy.settings table"
    for key in SETTING_KEYS:
        assert f"`{key}`" in README


@pytest.fixture(scope="module")
def task_flags() -> dict[str, set[str]]:
    """Every task fab offers, with its long flags, read from the fabfile's collection."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fabfile_under_test", REPO / "fabfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    flags = {}
    for name in module.ns.task_names:
        task = module.ns[name]
        flags[name] = {"--" + n.replace("_", "-") for arg in task.get_arguments() for n in arg.names if len(n) > 1}
        for alias in module.ns.task_names[name]:
            flags[alias] = flags[name]
    return flags


def test_every_fab_command_in_the_readme_exists_with_its_flags(task_flags: dict[str, set[str]]) -> None:
    commands = fab_commands()
    assert len(commands) >= 10
    for words in commands:
        task = _task_word(words)
        if task is None or task.isupper() or task.endswith("*"):
            continue  # placeholders such as `fab --debug TASK` or `s3.*`
        assert task in task_flags, f"README runs `{' '.join(words)}` but there is no task {task}"
        for word in words[words.index(task) + 1:]:
            if word.startswith("--"):
                flag = word.split("=")[0]
                assert flag in task_flags[task], f"`{' '.join(words)}`: {task} has no flag {flag}"


def test_readme_architecture_names_every_room_of_the_package() -> None:
    """The Architecture section reads like `ls deploy/`: every folder and module is placed in it."""
    section = README.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    package = REPO / "deploy"
    entries = [p.name + "/" for p in package.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    entries += [p.name for p in package.glob("*.py") if p.name != "__init__.py"]
    missing = [e for e in sorted(entries) if not re.search(rf"(^|\s){re.escape(e)}", section, flags=re.M)]
    assert missing == [], f"README's Architecture section does not place: {missing}"

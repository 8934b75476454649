"""The one check between an untrusted name (a bucket key, a file name a host sends) and a local path."""

from __future__ import annotations

import pytest

from deploy.errors import StorageError
from deploy.storage import safe_relative


@pytest.mark.parametrize("name", ["/etc/passwd", "\\etc\\passwd", "a/../../b", "..\\x", "a\x00b", "a\nb", "a\x7fb"])
def test_safe_relative_refuses_names_that_leave_the_folder_or_hide_characters(name: str) -> None:
    with pytest.raises(StorageError):
        safe_relative(name)


@pytest.mark.parametrize(("name", "normal"), [("a/b", "a/b"), ("a//b", "a/b"), ("./a", "a"), ("a\\b", "a/b"), ("", "")])
def test_safe_relative_returns_the_normal_form(name: str, normal: str) -> None:
    assert safe_relative(name) == normal

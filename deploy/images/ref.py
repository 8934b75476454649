"""What every image module shares: the ``name:tag`` reference, the progress observer, plan text.

Every image plan (push, pull, delete, gc) prints the same way: a headline, then one row per layer
or object (:class:`PlanText`), so the push and pull plans read alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.filesize import decimal

from deploy.errors import ImageError


@dataclass(frozen=True)
class ImageRef:
    """``name:tag`` of an image (the tag defaults to ``latest``).

    Example: ``ImageRef.parse("team/train") == ImageRef("team/train", "latest")``.
    """

    name: str
    tag: str

    @classmethod
    def parse(cls, text: str) -> "ImageRef":
        text = (text or "").strip()
        if not text:
            raise ImageError("No image given; pass --image=name:tag or set IMAGE in .env.")
        if "@" in text:
            raise ImageError(f"{text!r} names an image by digest; use name:tag.")
        slash = text.rfind("/")
        colon = text.rfind(":")
        name, tag = (text[:colon], text[colon + 1:]) if colon > slash else (text, "latest")
        if not name or not tag or any(part in ("", ".", "..") for part in name.split("/")):
            raise ImageError(f"{text!r} is not an image name:tag.")
        return cls(name, tag)

    def __str__(self) -> str:
        return f"{self.name}:{self.tag}"


class ImageProgress:
    """Observer of image transfers; the library calls it, a task decides how to show it."""

    def begin(self, what: str, total: int) -> None: ...
    def read(self, n: int) -> None: ...
    def sent(self, n: int) -> None: ...
    def raw(self, n: int) -> None: ...
    def skipped(self, diff_id: str, size: int) -> None: ...
    def downloaded(self, n: int) -> None: ...
    def end(self) -> None: ...


def short_id(digest: str | None) -> str:
    """The 12 hex digits people see for an image or layer id: ``sha256:3f2a...`` -> ``3f2a9c1b0d4e``."""
    return (digest or "").rsplit(":", 1)[-1][:12]


class PlanText:
    """The one way image plans print: :meth:`headline`, then :meth:`rows` (one per layer or object)."""

    def headline(self) -> str:
        raise NotImplementedError

    def rows(self) -> list[str]:
        return []

    def describe(self) -> list[str]:
        return [self.headline(), *self.rows()]


def plan_row(action: str, what: str, size: int | None = None) -> str:
    """One row of a plan: ``plan_row("fetch", "3f2a9c1b0d4e", 1200) == "  fetch   3f2a9c1b0d4e  1.2 kB"``."""
    return f"  {action:<6}  {what}" + (f"  {decimal(size)}" if size is not None else "")

"""``fab runs.show RUN --plot FILE.png``: the run's loss curves, with markers where it restarted or moved.

Scalars come from the TensorBoard event files the run uploaded (``logs/version_N/``, brought here by
:mod:`deploy.ledger.logs`), read with TensorBoard's own reader; every tag with ``loss`` in its name
is drawn against the global step. Restarts and host changes come from the run's events and are
placed at the step the curves had reached at that wall-clock time. Needs the ``plot`` extra
(matplotlib, tensorboard): ``pip install 'gpu-deploy[plot]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy.errors import ConfigError
from deploy.ledger.model import OPENING
from deploy.ledger.store import RunData

MISSING = ("The plot needs matplotlib and tensorboard, which the operator's install leaves out; "
           "install the plot extra: pip install 'gpu-deploy[plot]'.")


@dataclass(frozen=True)
class Series:
    """One scalar tag: (step, wall time, value) points in step order."""

    tag: str
    points: tuple[tuple[int, float, float], ...]


@dataclass(frozen=True)
class Marker:
    """A vertical line: at which step, and what happened there (``restarted``, ``moved to gpu-b``)."""

    step: int
    label: str


def read_scalars(folders: Sequence[str | os.PathLike[str]], match: str = "loss") -> list[Series]:
    """Every scalar tag containing ``match`` in the event files under ``folders`` (versions merged by step)."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        raise ConfigError(MISSING) from None
    merged: dict[str, dict[int, tuple[float, float]]] = {}
    runs = sorted({str(p.parent) for folder in folders for p in Path(folder).rglob("events.out.tfevents.*")})
    for run_dir in runs:
        acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if match in tag:
                for event in acc.Scalars(tag):  # a resumed run re-logs some steps: the later write wins
                    merged.setdefault(tag, {})[event.step] = (event.wall_time, event.value)
    return [Series(tag, tuple((step, wall, value) for step, (wall, value) in sorted(points.items())))
            for tag, points in sorted(merged.items())]


def markers(run: RunData, series: Sequence[Series]) -> list[Marker]:
    """Restarts and host moves, each at the step reached by then (the last point logged before it)."""
    points = sorted((wall, step) for s in series for step, wall, _ in s.points)
    found: list[Marker] = []
    host = None
    starts = 0
    for event in run.events:
        if event.kind not in OPENING:
            continue
        label = ""
        if event.host and host is not None and event.host != host:
            label = f"moved to {event.host.split('@')[-1]}"
        elif event.kind == "started":
            starts += 1
            label = "restarted" if starts > 1 else ""
        elif event.kind in ("restarted", "replaced"):
            label = event.kind
        host = event.host or host
        if label:
            before = [step for wall, step in points if wall <= event.at.timestamp()]
            step = before[-1] if before else 0
            if not found or found[-1].step != step:  # a move and its start are one marker
                found.append(Marker(step=step, label=label))
    return found


def draw(series: Sequence[Series], marks: Sequence[Marker], title: str, path: str | os.PathLike[str]) -> str:
    """Write the PNG; returns its path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError(MISSING) from None
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    try:
        for s in series:
            ax.plot([p[0] for p in s.points], [p[2] for p in s.points], label=s.tag, linewidth=1.4)
        for mark in marks:
            ax.axvline(mark.step, color="tab:red", linestyle="--", linewidth=1, alpha=0.8)
            ax.annotate(mark.label, xy=(mark.step, 1.0), xycoords=("data", "axes fraction"), rotation=90,
                        va="top", ha="right", fontsize=8, color="tab:red", xytext=(-2, -4),
                        textcoords="offset points")
        ax.set_xlabel("global step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if series:
            ax.legend(loc="upper right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no loss scalars logged yet", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
    return str(path)


def plot_run(run: RunData, log_folders: Sequence[str | os.PathLike[str]],
             path: str | os.PathLike[str]) -> tuple[str, int, int]:
    """(PNG path, curves drawn, markers drawn) for ``run`` from the event files in ``log_folders``."""
    series = read_scalars(log_folders)
    marks = markers(run, series)
    return draw(series, marks, f"run {run.run_id}", path), len(series), len(marks)

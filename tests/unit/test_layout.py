"""The package's shape, checked from its imports: no cycles, and each room imports only what it may.

- No import cycle anywhere in ``deploy/``, counting imports inside functions (a cycle hidden in a
  function is still a cycle).
- ``deploy/remote/`` runs on the GPU host with the standard library only.
- ``deploy/training/`` runs on the host too: it may use the bucket, settings and errors, never the
  operator's SSH, image, runtime or flow code.
- ``deploy/dev/`` (embedded servers, quick start, base image) is tooling: no library module imports it.
- Runtimes sit below the flow: no runtime imports the flow.
- Runtimes are strategies: no runtime imports another; what they share is ``runtimes.base`` and
  ``runtimes.code`` (what code travels and how). The flow imports only ``runtimes.base``, except the
  chooser (``flow/choose.py``), the one place that knows the concrete runtimes; nothing in ``watch/``
  imports a concrete runtime.
- Every module imports in a fresh interpreter.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.stack import missing_training_stack

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "deploy"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imported_names(path: Path) -> set[str]:
    """Every module name an ``import`` or ``from ... import`` in the file names, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from deploy.storage import sync` names the submodule deploy.storage.sync
            found.update(f"{node.module}.{alias.name}" for alias in node.names
                         if f"{node.module}.{alias.name}" in MODULES)
    return found


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        targets = {n for n in imported_names(path) if n in MODULES and n != name}
        # A name from a package's __init__ that the __init__ only re-exports is still that package.
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def in_room(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def test_no_import_cycles_in_the_package() -> None:
    assert cycles(edges()) == []


def test_host_programs_use_the_standard_library_only() -> None:
    for name, path in MODULES.items():
        if not in_room(name, "deploy.remote"):
            continue
        # or a neighbour shipped beside it (``from detach import detach`` when run as a file)
        outside = sorted(n for n in imported_names(path) if n.split(".")[0] not in sys.stdlib_module_names
                         and not (path.parent / f"{n}.py").is_file())
        assert outside == [], f"{name} runs on the host with the standard library only, but imports {outside}"


TRAINING_LEDGER = ("deploy.ledger", "deploy.ledger.model", "deploy.ledger.store")
"""The run ledger's one writer, which the training side uses too: it needs only storage, errors and the stdlib."""


def test_the_ledger_writer_the_training_side_uses_needs_nothing_else_of_the_operator() -> None:
    graph = edges()
    for name in TRAINING_LEDGER:
        bad = sorted(t for t in graph.get(name, ()) if t not in (*TRAINING_LEDGER, "deploy")
                     and not any(in_room(t, a) for a in ("deploy.errors", "deploy.storage")))
        assert bad == [], f"{name} is shipped to hosts for the training side, but imports {bad}"


def test_training_side_imports_no_operator_code() -> None:
    allowed = ("deploy.errors", "deploy.settings", "deploy.storage", "deploy.training", "deploy.remote")
    for name, targets in edges().items():
        if in_room(name, "deploy.training"):
            bad = sorted(t for t in targets if not any(in_room(t, a) for a in allowed) and t != "deploy"
                         and t not in TRAINING_LEDGER)  # exactly these ledger modules, not the whole room
            assert bad == [], f"{name} runs on the host but imports operator code: {bad}"


def test_library_never_imports_dev_tooling() -> None:
    for name, targets in edges().items():
        if not in_room(name, "deploy.dev"):
            assert not [t for t in targets if in_room(t, "deploy.dev")], f"{name} imports deploy.dev"


def test_runtimes_sit_below_the_flow() -> None:
    for name, targets in edges().items():
        if in_room(name, "deploy.runtimes"):
            assert not [t for t in targets if in_room(t, "deploy.flow")], f"{name} imports the flow"


SHARED_BY_RUNTIMES = ("deploy.runtimes.base", "deploy.runtimes.code")
"""What every runtime may use; every other child of deploy.runtimes is one runtime (a module or a package)."""


def runtime_of(module: str) -> str | None:
    """The runtime ``module`` belongs to (``deploy.runtimes.native``), or None outside any runtime."""
    parts = module.split(".")
    if parts[:2] != ["deploy", "runtimes"] or len(parts) < 3:
        return None
    top = ".".join(parts[:3])
    return None if top in SHARED_BY_RUNTIMES else top


def test_no_runtime_imports_another_runtime() -> None:
    for name, targets in edges().items():
        own = runtime_of(name)
        if own is not None:
            others = sorted(t for t in targets if runtime_of(t) not in (None, own))
            assert others == [], f"{name} is part of the {own} runtime but imports {others}"


CHOOSER = "deploy.flow.choose"
"""The one module of the flow that knows the concrete runtimes: it picks one for a host and builds them."""


def test_the_flow_reaches_runtimes_only_through_the_base_and_the_chooser() -> None:
    for name, targets in edges().items():
        if in_room(name, "deploy.flow") and name != CHOOSER:
            bad = sorted(t for t in targets if in_room(t, "deploy.runtimes") and t != "deploy.runtimes.base")
            assert bad == [], f"{name} is the flow, which calls runtimes through deploy.runtimes.base, but imports {bad}"


def test_the_watcher_imports_no_concrete_runtime() -> None:
    for name, targets in edges().items():
        if in_room(name, "deploy.watch"):
            bad = sorted(t for t in targets if runtime_of(t) is not None)
            assert bad == [], f"{name} is the watcher, which reaches runtimes through their Service, but imports {bad}"


def test_the_runtime_rule_knows_what_a_runtime_is() -> None:
    assert runtime_of("deploy.runtimes.native.plan") == "deploy.runtimes.native"
    assert runtime_of("deploy.runtimes.compose") == "deploy.runtimes.compose"
    assert runtime_of("deploy.runtimes.code.sync") is None and runtime_of("deploy.runtimes.base") is None
    assert runtime_of("deploy.runtimes") is None and runtime_of("deploy.flow.rollout") is None


THIRD_PARTY = ("torch", "lightning", "boto3", "botocore", "s3transfer", "fabric", "invoke", "paramiko", "rich", "docker",
               "runpod", "pathspec", "zstandard", "dotenv", "jsonargparse", "requests")
"""Imported once before the per-module forks: each child then pays only for our own modules."""

FORKED_IMPORTS = """
import importlib, json, os, sys
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
assert not [m for m in sys.modules if m == "deploy" or m.startswith("deploy.")], "the parent imported deploy"
failed, running, waiting = {}, {}, sys.argv[1].split(",")
def reap():
    pid, status = os.waitpid(-1, 0)
    module, read = running.pop(pid)
    with os.fdopen(read, "rb") as pipe:
        error = pipe.read().decode(errors="replace")
    if status != 0:
        failed[module] = error or f"exit status {status}"
while waiting or running:
    if waiting and len(running) < 2:
        module = waiting.pop(0)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                importlib.import_module(module)
                code = 0
            except BaseException as exc:
                os.write(write, f"{type(exc).__name__}: {exc}".encode()[:500])
                code = 1
            os._exit(code)
        os.close(write)
        running[pid] = (module, read)
    else:
        reap()
print(json.dumps(failed))
"""


def import_each_first(modules: list[str]) -> dict[str, str]:
    """Import each module first thing in a process of its own (a fork of one that imported only third-party
    packages), so a module that works only after another of ours was imported is caught; module -> error."""
    proc = subprocess.run([sys.executable, "-c", FORKED_IMPORTS, ",".join(modules), *THIRD_PARTY],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_module_imports_as_the_first_module_of_ours_in_a_process() -> None:
    failed = import_each_first(sorted(MODULES))
    # the operator's install alone (scripts/test --unit) has no torch: the training side is checked by the full suite
    assert {m: e for m, e in failed.items() if not missing_training_stack(e)} == {}


def test_the_fresh_import_check_catches_a_module_that_needs_another_imported_first(tmp_path: Path) -> None:
    broken = ROOT / "deploy" / "_broken_on_its_own.py"
    broken.write_text("import deploy\n\ndeploy.settings.Settings  # works only once someone imported deploy.settings\n")
    try:
        failed = import_each_first(["deploy.settings", "deploy._broken_on_its_own"])
    finally:
        broken.unlink()
    assert list(failed) == ["deploy._broken_on_its_own"] and "AttributeError" in failed["deploy._broken_on_its_own"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]

"""The package rules the tree is built on, checked on every import statement (ast, stdlib only):
the core is pure, the two runners never import each other, the queue and the lab import no
runner. An edge that breaks a rule fails here with the file and line."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: What the pure core (`signals/`, `detectors/`) may not import: transports, metrics, storage,
#: I/O and clocks. Same input, same flags: no clock reads, no files, no network.
IMPURE = (
    "faust",
    "mode",
    "kafka",
    "aiokafka",
    "aiohttp",
    "prometheus_client",
    "sqlite3",
    "streams",
    "time",
    "os",
    "io",
    "pathlib",
    "socket",
    "asyncio",
    "threading",
    "subprocess",
    "random",
    "urllib.request",
)
#: Calls that read the wall clock, whatever module they come through.
CLOCK_CALLS = ("now", "utcnow", "today", "time", "monotonic", "perf_counter")

RUNNERS = ("streams.embedded", "streams.kafka")

#: (package the importing file is in, packages it must not import, why)
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("signals", IMPURE, "the event and flag models are pure"),
    ("detectors", IMPURE, "the detector core is pure: no I/O, no clock, no transport"),
    ("streams.kafka", ("streams.embedded",), "the Kafka runner never imports the embedded one"),
    ("streams.embedded", ("streams.kafka",), "the embedded runner never imports the Kafka one"),
    ("streams.queue", (*RUNNERS, "streams.lab"), "the support queue is fed by both runners"),
    ("streams.lab", (*RUNNERS, "streams.queue"), "the lab runs offline, without a runner"),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, list[str]]]:
    """Each import statement (in functions too): its line and the modules it names, relative
    ones resolved (`from streams import embedded` names streams and streams.embedded)."""
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.append((node.lineno, [alias.name for alias in node.names]))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join([*parts[:keep], *([base] if base else [])])
            found.append((node.lineno, [base, *(f"{base}.{a.name}" for a in node.names)]))
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(root: Path = ROOT) -> list[str]:
    found: list[str] = []
    for top in ("signals", "detectors", "streams"):
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(path, root)
            tree = ast.parse(path.read_text(), str(path))
            rules = [(banned, why) for pkg, banned, why in RULES if within(module, pkg)]
            for lineno, names in imported_modules(tree, module, path.name == "__init__.py"):
                for banned, why in rules:
                    hit = next((n for n in names for b in banned if within(n, b)), None)
                    if hit:
                        found.append(f"{path.relative_to(root)}:{lineno} imports {hit}: {why}")
            if top in ("signals", "detectors"):
                for node in ast.walk(tree):
                    call = node.func if isinstance(node, ast.Call) else None
                    if isinstance(call, ast.Attribute) and call.attr in CLOCK_CALLS:
                        found.append(
                            f"{path.relative_to(root)}:{node.lineno} calls .{call.attr}(): "
                            "the detector core runs in event time, it never reads a clock"
                        )
    return found


def test_the_tree_keeps_its_package_rules() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("path", "line", "rule"),
    [
        ("streams/kafka/sink.py", "from streams.embedded.server import build_app", "Kafka"),
        ("streams/embedded/server.py", "from streams.kafka import io", "embedded"),
        ("streams/queue/pages.py", "from streams.embedded.runner import EmbeddedRunner", "queue"),
        ("streams/lab/simulator.py", "from ..queue.store import QueueStore", "lab"),
        ("detectors/engine.py", "import prometheus_client", "pure"),
        ("signals/wire.py", "import sqlite3", "pure"),
        ("detectors/scoring.py", "from time import time", "pure"),
    ],
)
def test_a_forbidden_edge_fails_the_check(tmp_path: Path, path: str, line: str, rule: str) -> None:
    """A copy of the tree with one forbidden import added (at the top, or inside a function)
    breaks the rule, with the file and the reason."""
    for top in ("signals", "detectors", "streams"):
        for source in (ROOT / top).rglob("*.py"):
            target = tmp_path / source.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(source.read_text())
    target = tmp_path / path
    target.write_text(target.read_text() + f"\n\ndef _sneaky() -> None:\n    {line}\n")
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(path) and rule in found[0]


def test_a_clock_read_in_the_core_fails_the_check(tmp_path: Path) -> None:
    target = tmp_path / "detectors" / "engine.py"
    target.parent.mkdir(parents=True)
    (tmp_path / "signals").mkdir()
    (tmp_path / "streams").mkdir()
    target.write_text("from datetime import datetime\n\nSTARTED = datetime.now()\n")
    assert [v.split(": ", 1)[0] for v in violations(tmp_path)] == [
        "detectors/engine.py:3 calls .now()"
    ]

"""The embedded runner's checkpoint carries the incident tracker's state with the engine's, and a
checkpoint written before incidents existed (the engine's state alone) is still read."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import pytest

from signals.exceptions import ConfigurationError
from signals.wire import AnyEvent
from streams.embedded.runner import CHECKPOINT_FORMAT, EmbeddedRunner
from streams.queue.store import QueueStore
from streams.settings import Settings
from tests.unit.builders import SECOND, failures, with_id


def runner(tmp_path: Path) -> EmbeddedRunner:
    settings = Settings(db_path=tmp_path / "q.db", checkpoint_path=tmp_path / "state.bin")
    return EmbeddedRunner(settings, QueueStore(settings.db_path))


def outage(users: int, start: int = 0) -> list[AnyEvent]:
    """`users` clients, five failed logins each (service_unavailable), in time order."""
    events: list[AnyEvent] = []
    for n in range(users):
        events += failures(
            start + n * 100, 5, 2 * SECOND, f"c{n:03d}", reason="service_unavailable"
        )
    return [with_id(e) for e in sorted(events, key=lambda e: e.ts)]


def test_checkpoint_keeps_an_open_incident_across_a_restart(tmp_path: Path) -> None:
    first = runner(tmp_path)
    first.ingest(outage(30))
    first.tick(time.time() + 120)  # two quiet minutes: each client's time passes its confirmation
    assert len(first.tracker.open) == 1
    (opened,) = first.store.list_incidents()
    first.checkpoint()
    data = pickle.loads((tmp_path / "state.bin").read_bytes())
    assert data[0] == CHECKPOINT_FORMAT and data[1] == 3  # 3: with the journal position

    again = runner(tmp_path)
    assert [i.incident_id for i in again.tracker.open.values()] == [opened["incident_id"]]
    assert len(again.engine.users) == len(first.engine.users)


def test_a_checkpoint_from_before_incidents_is_still_read(tmp_path: Path) -> None:
    old = runner(tmp_path)
    old.ingest(outage(3))
    (tmp_path / "state.bin").write_bytes(old.engine.snapshot())  # the old file: engine only
    resumed = runner(tmp_path)
    assert set(resumed.engine.users) == {"c000", "c001", "c002"}
    assert resumed.tracker.open == {} and resumed.tracker.causes == {}


def test_a_checkpoint_of_another_version_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state.bin").write_bytes(pickle.dumps((CHECKPOINT_FORMAT, 99, b"", b"")))
    with pytest.raises(ConfigurationError, match="checkpoint has version 99"):
        runner(tmp_path)

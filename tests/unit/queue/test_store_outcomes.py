"""Outcomes teach us: the false-flag share per kind and per rule over 7 and 30 days, from what
agents marked when they resolved (real SQLite)."""

from __future__ import annotations

import time
from pathlib import Path

from signals.flags import Signal
from streams.queue.store import QueueStore
from tests.unit.builders import T0
from tests.unit.detectors.test_incidents import flag, rage_signal


def repeated(ts: int) -> Signal:
    signal = rage_signal(ts)
    evidence = signal.evidence.model_copy(update={"rule": "repeated_bursts", "bursts": 3})
    return signal.model_copy(update={"evidence": evidence})


def test_false_flag_share_per_kind_and_rule(tmp_path: Path) -> None:
    store = QueueStore(tmp_path / "q.db")
    outcomes = {
        "a": (rage_signal(T0), "false_positive"),
        "b": (rage_signal(T0 + 1), "client_was_fine"),
        "c": (repeated(T0 + 2), "false_positive"),
        "d": (rage_signal(T0 + 3), None),  # still open: not counted
    }
    for user, (signal, outcome) in outcomes.items():
        store.write_flag(flag(user, signal.ts, signal))
        if outcome is not None:
            store.claim(f"flg_{user}", "Ana")
            store.resolve(f"flg_{user}", outcome, agent="Ana")
    now = time.time()
    shares = store.false_flag_shares(now)
    assert shares["rage_click"] == {7: (2, 3), 30: (2, 3)}
    assert shares["failed_logins"] == {7: (0, 0), 30: (0, 0)}
    by_rule = store.false_flag_shares_by_rule(now)
    assert by_rule == {
        ("rage_click", "burst"): {7: (1, 2), 30: (1, 2)},
        ("rage_click", "repeated_bursts"): {7: (1, 1), 30: (1, 1)},
    }
    # eight days on, only the 30-day window still holds them
    later = store.false_flag_shares_by_rule(now + 8 * 86_400)
    assert later[("rage_click", "burst")] == {7: (0, 0), 30: (1, 2)}

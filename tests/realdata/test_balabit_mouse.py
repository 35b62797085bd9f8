"""Rage clicks without a target on real mouse sessions of people at work (Balabit training set).

Issue 11: x/y-only clicks, as many third-party sources send; people click one spot fast all the
time, so at most 5 % of these sessions may be flagged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.lab.mouse import read_mouse_csv, sessions_flagged

pytestmark = pytest.mark.realdata


def test_at_most_5_percent_of_real_sessions_are_flagged(real_data: Path) -> None:
    path = real_data / "balabit" / "training_no_moves.csv.gz"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    clicks = read_mouse_csv(path)
    assert len(clicks) > 50_000 and all(c.target is None for c in clicks[:100])
    flagged, sessions = sessions_flagged(clicks)
    assert sessions == 65
    assert flagged <= 0.05 * sessions, f"{flagged} of {sessions} sessions flagged"

"""Real mouse sessions (the Balabit Mouse Dynamics Challenge CSV) as target-less click events.

Rows are: user folder, session file, then Balabit's record timestamp (s), client timestamp (s),
button, state, x, y. Each `Left`/`Pressed` row becomes one click with x/y and no target, page or
label, as many third-party sources send; one session is one user (`balabit:<user>/<session>`),
its times relative to `start_ms`. Used to measure how often the rage-click rule speaks on real
people at work (who were not frustrated on the whole), never to fit it.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Iterator
from pathlib import Path

from signals.events import ClickEvent

#: 2026-11-21T08:00:00Z
DEFAULT_START_MS = 1_795_248_000_000


def mouse_clicks(
    rows: Iterable[list[str]], start_ms: int = DEFAULT_START_MS
) -> Iterator[ClickEvent]:
    """Left-button presses of the rows as clicks without a target (header rows are skipped)."""
    for row in rows:
        if len(row) < 8 or row[4] != "Left" or row[5] != "Pressed":
            continue
        user, session, _, client_ts, _, _, x, y = row[:8]
        yield ClickEvent(
            type="click",
            user_id=f"balabit:{user}/{session}",
            ts=start_ms + round(float(client_ts) * 1000),
            x=float(x),
            y=float(y),
        )


def read_mouse_csv(path: Path, start_ms: int = DEFAULT_START_MS) -> list[ClickEvent]:
    """Every click of a (gzipped) Balabit CSV, in event-time order."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as handle:
        clicks = list(mouse_clicks(csv.reader(handle), start_ms))
    clicks.sort(key=lambda c: (c.ts, c.user_id))
    return clicks


def sessions_flagged(clicks: Iterable[ClickEvent]) -> tuple[int, int]:
    """(sessions flagged for rage clicks, sessions) when the engine replays `clicks`."""
    from detectors.engine import DetectionEngine
    from signals.flags import Flag

    engine = DetectionEngine()
    sessions: set[str] = set()
    for click in clicks:
        sessions.add(click.user_id)
        engine.push(click)
    engine.flush()
    flagged = {o.user_id for o in engine.outbox if isinstance(o, Flag)}
    return len(flagged), len(sessions)


def main() -> None:  # pragma: no cover - a lab tool: python -m streams.lab.mouse FILE
    import sys

    flagged, sessions = sessions_flagged(read_mouse_csv(Path(sys.argv[1])))
    print(f"sessions flagged: {flagged}/{sessions} ({100 * flagged / max(1, sessions):.1f} %)")


if __name__ == "__main__":  # pragma: no cover
    main()

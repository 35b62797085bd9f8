"""When input goes quiet, how far a runner moves event time on. Shared by the embedded runner and
the Kafka worker so both release buffered events and fire timers the same way."""

from __future__ import annotations

#: Newest events within this much of the wall clock mean a live stream (not a back-fill).
LIVE_WINDOW_MS = 600_000


def idle_advance_target(newest_event_ts: int, now_s: float, allowed_lateness_ms: int) -> int:
    """The event time to advance to after an idle spell.

    From the newest *event*, not from the watermark: an advance must not compound, or every idle
    tick would push event time another lateness ahead of real time. A live stream also moves with
    the wall clock: nothing older than now - lateness is still in flight.

    >>> idle_advance_target(1_000_000, now_s=5_000.0, allowed_lateness_ms=5_000)  # back-fill
    1005001
    >>> idle_advance_target(1_000_000, now_s=1_010.0, allowed_lateness_ms=5_000)  # live
    1010000
    """
    target = newest_event_ts + allowed_lateness_ms + 1  # releases every buffered event
    now_ms = int(now_s * 1000)
    if abs(now_ms - newest_event_ts) < LIVE_WINDOW_MS:
        target = max(target, now_ms)
    return target

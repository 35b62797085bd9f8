"""What a partition of the batch path promises the others (`Part.progress`): no copy or
forwarded event of an older event time will come from it. The lock-step this drives is proven
against the real broker (flags equal replay with two workers) in tests/integration."""

from __future__ import annotations

from detectors.engine import DetectionEngine
from signals.events import ClickEvent, LoginEvent
from streams.kafka.batch import INF, Held, Part
from streams.kafka.user_state import UserChangelog

T0 = 1_795_255_200_000


def _part() -> Part:
    return Part(0, DetectionEngine(), UserChangelog())


def _click(ts: int, user: str = "u1") -> ClickEvent:
    return ClickEvent(type="click", user_id=user, ts=ts, target="#pay", page="/billing")


def _failed_login(ts: int, ip: str | None = "203.0.113.9") -> LoginEvent:
    return LoginEvent(
        type="login", user_id="u1", ts=ts, outcome="failure", reason="bad_password", ip=ip
    )


def _hold(part: Part, offset: int, event: ClickEvent | LoginEvent, own: bool = True) -> None:
    part.hold(Held(offset, event.ts if own else None, b"", event, 0.0))


def test_held_clicks_promise_up_to_the_newest_one() -> None:
    part = _part()
    for i in range(5):
        _hold(part, i, _click(T0 + 60_000 * i))
    # The clicks send nothing to other partitions: they may run on to the newest held one.
    assert part.progress(caught_up=False) == T0 + 240_000


def test_a_held_failed_login_with_an_ip_holds_the_promise_at_its_time() -> None:
    part = _part()
    _hold(part, 0, _click(T0))
    _hold(part, 1, _failed_login(T0 + 60_000))
    _hold(part, 2, _click(T0 + 120_000))
    assert part.progress(caught_up=False) == T0 + 60_000
    part.release()
    assert part.progress(caught_up=False) == T0 + 60_000  # its copies are not sent yet
    part.release()
    assert part.progress(caught_up=False) == T0 + 120_000
    part.release()
    part.max_pushed_ts = T0 + 120_000
    assert part.progress(caught_up=False) == T0 + 120_000  # nothing held: how far it got
    assert part.progress(caught_up=True) == INF


def test_the_oldest_held_send_counts_even_out_of_order() -> None:
    part = _part()
    _hold(part, 0, _failed_login(T0 + 90_000))
    _hold(part, 1, _failed_login(T0 + 30_000))  # a client's batch dated earlier
    _hold(part, 2, _click(T0 + 200_000))
    assert part.progress(caught_up=False) == T0 + 30_000


def test_failed_logins_without_an_ip_send_nothing() -> None:
    part = _part()
    _hold(part, 0, _failed_login(T0, ip=None))
    _hold(part, 1, _click(T0 + 50_000))
    assert part.progress(caught_up=False) == T0 + 50_000


def test_another_partitions_event_is_forwarded_so_it_holds_the_promise() -> None:
    part = _part()
    _hold(part, 0, _click(T0 + 10_000, user="someone-else"), own=False)
    _hold(part, 1, _click(T0 + 80_000))
    assert part.progress(caught_up=False) == T0 + 10_000
    part.release()
    assert part.progress(caught_up=False) == T0 + 80_000


def test_dropping_the_held_records_forgets_their_promise() -> None:
    part = _part()
    _hold(part, 0, _failed_login(T0))
    part.drop_held()
    assert not part.held and not part.held_sends
    assert part.progress(caught_up=False) == -INF  # nothing taken in, nothing held

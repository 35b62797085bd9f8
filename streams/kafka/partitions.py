"""How the Kafka runner spreads events over partitions of users, kept free of Kafka so it can be
tested against one engine.

Every event goes to the partition of its user (Kafka's default partitioner over the user_id, the
same one `frustration produce` and any other keyed producer uses). A failed login that names an IP
also goes, as a *source-only* copy, to every other partition: credential stuffing is judged per IP
across users, and each partition's engine must see the whole of an IP's failures to judge it as
one engine seeing everything would (`DetectionEngine.push(..., source_only=True)`). Failed logins
are a small share of traffic, so the copies cost little.
"""

from __future__ import annotations

from collections.abc import Callable

from signals.wire import AnyEvent

PartitionOf = Callable[[str, int], int]


def needs_source_copies(event: AnyEvent) -> bool:
    """True for the events other partitions must see: failed logins from a known IP."""
    return event.type == "login" and event.outcome == "failure" and event.ip is not None


def destinations(
    event: AnyEvent, partitions: int, partition_of: PartitionOf
) -> list[tuple[int, bool]]:
    """(partition, source_only) for each copy of `event`: its user's partition first.

    >>> from signals.events import LoginEvent
    >>> ev = LoginEvent(type="login", user_id="u1", ts=1_795_255_200_000, outcome="failure",
    ...                 ip="198.51.100.23")
    >>> destinations(ev, 3, lambda user_id, n: 1)
    [(1, False), (0, True), (2, True)]
    """
    own = partition_of(event.user_id, partitions)
    out = [(own, False)]
    if needs_source_copies(event):
        out += [(p, True) for p in range(partitions) if p != own]
    return out

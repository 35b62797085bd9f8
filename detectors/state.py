"""Versioned state blobs for checkpoints: the engine's, the incident tracker's, a Kafka worker's;
and the heap indexes that let a sweep find idle entries without visiting all of them.

A blob is a pickled tuple whose first item is the layout version; a blob of another version is
refused with a clear error rather than misread. (Pickle: these blobs are written and read only by
this program, from its own checkpoint files and changelog topics.)
"""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from signals.exceptions import ConfigurationError


def dump_state(version: int, parts: tuple[Any, ...]) -> bytes:
    """`parts` as a blob of layout `version`."""
    return pickle.dumps((version, *parts), protocol=pickle.HIGHEST_PROTOCOL)


def load_state(blob: bytes, version: int, what: str) -> tuple[Any, ...]:
    """The parts of a blob written by `dump_state` with this `version`.

    >>> load_state(dump_state(2, ("a", 1)), 2, "engine state")
    ('a', 1)
    >>> load_state(dump_state(1, ("a",)), 2, "engine state")
    Traceback (most recent call last):
    ...
    signals.exceptions.ConfigurationError: engine state has version 1, this build reads 2
    """
    data = pickle.loads(blob)
    if not isinstance(data, tuple) or not data or data[0] != version:
        found = data[0] if isinstance(data, tuple) and data else "?"
        raise ConfigurationError(f"{what} has version {found}, this build reads {version}")
    return data[1:]


# -- indexes of idle entries ----------------------------------------------------------------------
class HasLastTs(Protocol):
    last_ts: int


def heap_of(entries: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """(time, key) entries as a heap."""
    heap = list(entries)
    heapq.heapify(heap)
    return heap


def pop_idle(
    index: list[tuple[int, str]], items: Mapping[str, HasLastTs], before: int
) -> list[str]:
    """The keys of `items` whose last event is before `before`, taken out of `index` (a heap of
    (time at or before the item's last event, key)); the others it meets are queued again at
    their last event."""
    idle: list[str] = []
    again: dict[str, int] = {}
    while index and index[0][0] < before:
        _, key = heapq.heappop(index)
        item = items.get(key)
        if item is None or key in again:
            continue  # forgotten since it was queued
        if item.last_ts < before:
            idle.append(key)
        again[key] = item.last_ts
    for key, last_ts in again.items():
        if last_ts >= before:
            heapq.heappush(index, (last_ts, key))
    return sorted(idle)

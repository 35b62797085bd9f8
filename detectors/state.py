"""Versioned state blobs for checkpoints: the engine's, the incident tracker's, a Kafka worker's.

A blob is a pickled tuple whose first item is the layout version; a blob of another version is
refused with a clear error rather than misread. (Pickle: these blobs are written and read only by
this program, from its own checkpoint files and changelog topics.)
"""

from __future__ import annotations

import pickle
from typing import Any

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

"""The errors of frustration-signals.

One root, so a caller can catch everything this project raises on purpose::

    FrustrationError
    ├── InvalidEvent          one input item that cannot be used (carries a reason code)
    └── ConfigurationError    settings that cannot work together (raised at start-up)

Bad input is data, not a crash: runners catch `InvalidEvent`, count it by `reason` and write it to
the dead-letter output. Nothing else in the data path raises for a single bad event.
"""

from __future__ import annotations

from typing import Literal, get_args

InvalidReason = Literal[
    "not_json",
    "not_object",
    "oversized",
    "missing_field",
    "wrong_type",
    "invalid_value",
    "unknown_type",
    "bad_ts",
    "absurd_ts",
]

#: Every reason an event can be rejected for, in a fixed order (metric label values).
INVALID_REASONS: tuple[InvalidReason, ...] = get_args(InvalidReason)


class FrustrationError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidEvent(FrustrationError):
    """One input item that is not a usable event.

    `reason` is one of `INVALID_REASONS` (used as a metric label and in the dead-letter record);
    `detail` says which field and why, without quoting the input (it may hold free text).
    """

    def __init__(self, reason: InvalidReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: InvalidReason = reason
        self.detail = detail


class ConfigurationError(FrustrationError):
    """Settings that cannot work together; raised once at start-up, never per event."""

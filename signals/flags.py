"""What comes out: signals, flags for the support queue, and security alerts.

A *signal* is one piece of evidence from one detector (a rage-click burst, a lock-out, an abandoned
chat). A *flag* is what the support queue receives: one open flag per user, with a stable
`flag_id`, a severity that routes it, the signals behind it and one plain sentence for the agent.
Evidence is metadata only: counts, durations, the control and page, never free text.

Times are epoch milliseconds in memory and RFC 3339 (UTC, millisecond precision) on the wire.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

SignalKind = Literal["rage_click", "failed_logins", "abrupt_chat_end"]
SIGNAL_KINDS: tuple[SignalKind, ...] = get_args(SignalKind)

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = get_args(Severity)  # lowest first


def format_ts(ms: int) -> str:
    """Epoch milliseconds as RFC 3339 in UTC with milliseconds, e.g. 2026-11-21T10:00:00.250Z."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_ts(value: Any) -> Any:
    """Accept RFC 3339 text as well as epoch ms (flags read back from Kafka or SQLite)."""
    if isinstance(value, str):
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
    return value


Timestamp = Annotated[
    int,
    BeforeValidator(parse_ts),
    PlainSerializer(format_ts, return_type=str, when_used="json"),
    Field(json_schema_extra={"type": "string", "format": "date-time"}),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RageClickEvidence(_Frozen):
    rule: Literal["burst", "repeated_bursts"] = Field(
        description="burst: one fast run of clicks; repeated_bursts: several shorter runs"
    )
    clicks: int = Field(description="clicks in the burst (or in all counted bursts)")
    bursts: int = Field(description="bursts counted (1 for rule=burst)")
    span_ms: int = Field(description="from the first to the last counted click")
    max_gap_ms: int = Field(description="longest gap between consecutive clicks of a burst")
    target: str | None = None
    label: str | None = None
    element: str | None = None
    page: str | None = None


class FailedLoginEvidence(_Frozen):
    failures: int = Field(description="attempts counted (failures < 1 s apart count once)")
    span_ms: int = Field(description="from the first to the last counted failure")
    distinct_ips: int
    distinct_devices: int
    last_reason: str | None = Field(default=None, description="reason code of the last failure")
    waited_for_success_ms: int = Field(
        description="how long after the last failure no success came"
    )


class AbruptChatEvidence(_Frozen):
    chat_id: str
    waited_ms: int = Field(description="how long the client had waited for an agent when it ended")
    unanswered_messages: int = Field(description="client messages since the last agent message")
    agent_messages: int = Field(description="agent messages in the whole chat")
    ended_by: Literal["user", "system", "timeout"]
    duration_ms: int = Field(description="from the first event of the chat to its end")
    channel: str | None = None


class Signal(_Frozen):
    """One piece of evidence of frustration from one detector."""

    kind: SignalKind
    ts: Timestamp = Field(description="event time the signal was recognised")
    strength: float = Field(
        description="contribution to the user's score before decay; 1.0 is a signal that flags "
        "on its own, less is a weak signal that needs corroboration"
    )
    evidence: RageClickEvidence | FailedLoginEvidence | AbruptChatEvidence


class Flag(_Frozen):
    """A frustrated user for the support queue. Re-emitted with the same `flag_id` when it
    escalates; a new `flag_id` only after the cooldown."""

    flag_id: str = Field(description="stable: the same input gives the same id")
    user_id: str
    ts: Timestamp = Field(description="event time of this emission")
    severity: Severity
    score: float
    signals: tuple[Signal, ...]
    reason: str = Field(description="one plain sentence an agent can read")
    opened_ts: Timestamp = Field(description="event time the flag was first emitted")
    update: int = Field(description="0 for the first emission, then 1, 2, ... per re-emission")
    incident_id: str | None = Field(
        default=None, description="set when the flag is explained by an open incident"
    )


SecurityAlertKind = Literal[
    "credential_stuffing", "brute_force", "distributed_stuffing", "account_scan"
]
SECURITY_ALERT_KINDS: tuple[SecurityAlertKind, ...] = get_args(SecurityAlertKind)


class SecurityAlert(_Frozen):
    """An attack on logins. Goes to security, never to outreach; the accounts it touched are not
    flagged for it.

    - `credential_stuffing`: one source failing logins for many accounts;
    - `account_scan`: one source failing logins for several accounts that do not exist (a
      scanner walking a list of user names; `distinct_accounts` counts those names);
    - `brute_force`: one source hammering one or a few accounts far beyond human pace or volume
      (`rule` says which: volume, pace or parallel);
    - `distributed_stuffing`: a surge of failures for many accounts spread over many sources (a
      botnet); `ip` is empty, `distinct_ips` counts the sources.
    """

    alert_id: str
    kind: SecurityAlertKind = "credential_stuffing"
    ts: Timestamp
    ip: str = Field(description="the attacking source; empty for distributed_stuffing")
    distinct_accounts: int
    failures: int
    window_ms: int
    first_ts: Timestamp
    rule: Literal["volume", "pace", "rhythm", "parallel"] | None = Field(
        default=None, description="brute_force only: which rule caught it"
    )
    distinct_ips: int | None = Field(
        default=None, description="distributed_stuffing only: sources in the window"
    )

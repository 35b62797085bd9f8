"""Incidents: many clients frustrated by one cause at once (a failing login service, a dead "Pay
now" button, a chat queue nobody answers).

An incident groups the flags its cause explains: the support queue shows one item with the count,
the evidence and a suggested bulk message, instead of one outreach item per client. It is emitted
like a flag: the same `incident_id` again with `update` + 1 as it grows and once more when it
closes. It carries counts and rates, never a user id (the attached flags name the clients).

Times are epoch milliseconds in memory and RFC 3339 (UTC, millisecond precision) on the wire, as
for flags.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from signals.flags import SignalKind, Timestamp

IncidentStatus = Literal["open", "closed"]


class Incident(BaseModel):
    """One cause behind a surge of flags. Re-emitted with the same `incident_id` and `update` + 1
    when it grows, and when it closes (`status` "closed", `closed_ts` set)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    incident_id: str = Field(description="stable: a hash of the cause key and the opening time")
    cause: str = Field(
        description="cause key: the signal kind and what it points at, e.g. "
        "failed_logins:service_unavailable, rage_click:/billing|#pay, abrupt_chat_end:support"
    )
    kind: SignalKind
    ts: Timestamp = Field(description="event time of this emission")
    status: IncidentStatus = Field(description="open until the rate falls back, then closed")
    first_seen_ts: Timestamp = Field(description="first flag of the cause in the surge window")
    opened_ts: Timestamp = Field(description="event time the surge was recognised")
    last_seen_ts: Timestamp = Field(description="newest flag of the cause while open")
    closed_ts: Timestamp | None = Field(default=None, description="event time it closed")
    affected_users: int = Field(description="clients whose flags are attached to the incident")
    individual_users: int = Field(
        description="clients flagged for this cause while it was open but kept in individual "
        "outreach (stronger evidence: a high severity or signals of another cause)"
    )
    peak_rate: float = Field(description="most distinct clients flagged per minute (window mean)")
    baseline_rate: float = Field(description="usual clients flagged per minute before the surge")
    window_ms: int = Field(description="window the rates are counted over")
    evidence: str = Field(description="one plain sentence for agents and SREs; no user data")
    message: str = Field(description="a suggested bulk message to the affected clients")
    update: int = Field(description="0 for the first emission, then 1, 2, ... per re-emission")

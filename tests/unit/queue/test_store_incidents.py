"""The support-queue store (real SQLite) with incidents: grouping, the agent's claim winning,
ungrouping on stronger evidence, resolving an incident with its flags, re-opening, counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from signals.flags import Flag
from signals.incidents import Incident
from streams.queue.store import FlagWrite, IncidentWrite, QueueError, QueueStore
from tests.unit.builders import MINUTE, T0
from tests.unit.detectors.test_incidents import chat_signal, flag

IID = "inc_test"


def incident(update: int = 0, status: str = "open", affected: int = 3) -> Incident:
    return Incident(
        incident_id=IID,
        cause="failed_logins:service_unavailable",
        kind="failed_logins",
        ts=T0 + update * MINUTE,
        status="closed" if status == "closed" else "open",
        first_seen_ts=T0,
        opened_ts=T0,
        last_seen_ts=T0,
        closed_ts=T0 + update * MINUTE if status == "closed" else None,
        affected_users=affected,
        individual_users=0,
        peak_rate=1.0,
        baseline_rate=0.0,
        window_ms=300_000,
        evidence="Clients could not log in.",
        message="We are sorry.",
        update=update,
    )


def grouped(f: Flag) -> Flag:
    return f.model_copy(update={"incident_id": IID})


@pytest.fixture
def store(tmp_path: Path) -> QueueStore:
    return QueueStore(tmp_path / "q.db")


def test_a_re_emission_groups_a_stored_flag_once(store: QueueStore) -> None:
    f = flag("a", T0)
    assert store.write_flag(f) == FlagWrite(new=True)
    assert store.write_incident(incident()) == IncidentWrite(new=True)
    assert store.write_flag(grouped(f)) == FlagWrite(grouped_into=IID, listed_in=IID)
    assert store.write_flag(grouped(f)) is None  # the same message again
    assert store.write_flag(f) is None  # an older message replayed does not ungroup it
    assert store.list_flags() == []  # out of the individual queue
    assert [x["flag_id"] for x in store.list_flags(grouped=True)] == [f.flag_id]
    assert [x["flag_id"] for x in store.list_flags(incident_id=IID)] == [f.flag_id]
    history = [h["what"] for h in store.get_flag(f.flag_id)["history"]]
    assert history == ["flagged", "grouped"]
    (item,) = store.list_incidents()
    assert (item["clients_listed"], item["clients_grouped"]) == (1, 1)
    assert item["state"] == "open" and item["status"] == "open"


def test_a_claimed_flag_stays_with_its_agent_and_is_only_listed(store: QueueStore) -> None:
    f = flag("b", T0)
    store.write_flag(f)
    store.claim(f.flag_id, "agent-ann")
    assert store.write_flag(grouped(f)) == FlagWrite(listed_in=IID)
    escalated = grouped(flag("b", T0 + MINUTE, update=1, severity="medium"))
    assert store.write_flag(escalated) == FlagWrite(escalated=True)
    shown = store.get_flag(f.flag_id)
    assert shown["status"] == "claimed" and shown["incident_id"] is None
    assert [x["user_id"] for x in store.list_flags()] == ["b"]
    store.write_incident(incident())
    (client,) = store.get_incident(IID)["clients"]
    assert client["user_id"] == "b" and client["grouped"] is False


def test_stronger_evidence_takes_a_flag_back_to_individual_outreach(store: QueueStore) -> None:
    store.write_incident(incident())
    store.write_flag(grouped(flag("c", T0)))
    worse = flag("c", T0 + MINUTE, chat_signal(T0 + MINUTE), update=1, severity="high")
    assert store.write_flag(worse) == FlagWrite(escalated=True)
    assert [x["user_id"] for x in store.list_flags()] == ["c"]
    assert [h["what"] for h in store.get_flag(worse.flag_id)["history"]] == [
        "flagged",
        "grouped",
        "escalated",
        "ungrouped",
    ]
    # still listed under the incident for follow-up
    assert [c["user_id"] for c in store.get_incident(IID)["clients"]] == ["c"]


def test_resolving_an_incident_resolves_its_open_grouped_flags(store: QueueStore) -> None:
    store.write_incident(incident())
    for user in ("d1", "d2", "d3"):
        store.write_flag(grouped(flag(user, T0)))
    store.claim("flg_d3", "agent-bob")  # an agent took this one personally
    assert store.claim_incident(IID, "agent-cy")["claimed_by"] == "agent-cy"
    with pytest.raises(QueueError, match="not open"):
        store.claim_incident(IID, "agent-dee")
    shown = store.resolve_incident(IID, "contacted", "bulk message sent")
    assert shown["status"] == "resolved" and shown["note"] == "bulk message sent"
    statuses = {c["user_id"]: c["status"] for c in shown["clients"]}
    assert statuses == {"d1": "resolved", "d2": "resolved", "d3": "claimed"}
    assert store.get_flag("flg_d1")["outcome"] == "contacted"
    with pytest.raises(QueueError, match="already resolved"):
        store.resolve_incident(IID, "contacted")
    with pytest.raises(QueueError, match="unknown outcome"):
        store.resolve_incident(IID, "fixed")
    with pytest.raises(QueueError, match="no incident"):
        store.get_incident("inc_nope")
    # a newcomer grouped under the resolved incident re-opens it
    store.write_flag(grouped(flag("d4", T0 + MINUTE)))
    assert store.list_incidents()[0]["status"] == "open"
    history = [h["what"] for h in store.get_incident(IID)["history"]]
    assert history == ["opened", "claimed", "resolved", "reopened"]


def test_incident_emissions_are_idempotent_and_closing_is_recorded(store: QueueStore) -> None:
    assert store.write_incident(incident(0)) == IncidentWrite(new=True)
    assert store.write_incident(incident(0)) is None
    assert store.write_incident(incident(2, affected=9)) == IncidentWrite()
    assert store.write_incident(incident(1, affected=5)) is None  # older: ignored
    assert store.write_incident(incident(3, "closed", affected=9)) == IncidentWrite(closed=True)
    (item,) = store.list_incidents()
    assert item["state"] == "closed" and item["affected_users"] == 9 and item["update"] == 3
    assert store.list_incidents(state="open") == []
    with pytest.raises(QueueError, match="unknown state"):
        store.list_incidents(state="gone")


def test_counts_are_queue_items(store: QueueStore) -> None:
    store.write_incident(incident())
    for user in ("e1", "e2"):
        store.write_flag(grouped(flag(user, T0)))
    store.write_flag(flag("alone", T0, severity="medium"))
    counts = store.counts(now=10**10)
    assert counts.by_status == {"open": 2, "claimed": 0, "resolved": 0}  # 1 flag + 1 incident
    assert counts.open_by_severity["medium"] == 1 and counts.open_by_severity["low"] == 0
    assert counts.open_incidents == {"failed_logins": 1}
    store.write_incident(incident(1, "closed"))
    assert store.counts().open_incidents == {}

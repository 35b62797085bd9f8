"""streams.queue.wording: what an agent reads about a case is in words, never in engine codes,
and the suggested messages hold facts from our own pages only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from streams.queue import wording

RAGE: dict[str, Any] = {
    "kind": "rage_click",
    "ts": "2026-12-02T10:00:00Z",
    "strength": 1.4,
    "evidence": {
        "clicks": 8,
        "span_ms": 1200,
        "label": "Pay now",
        "element": "button",
        "page": "/billing",
        "rule": "burst",
    },
}
LOGIN: dict[str, Any] = {
    "kind": "failed_logins",
    "ts": "2026-12-02T10:01:00Z",
    "strength": 1.0,
    "evidence": {
        "failures": 5,
        "span_ms": 48_000,
        "last_reason": "service_unavailable",
        "waited_for_success_ms": 60_000,
        "distinct_devices": 1,
        "distinct_ips": 1,
    },
}
CODES = ("rage_click", "failed_logins", "service_unavailable", "bad_otp", "score", "strength")


def _flag(*signals: dict[str, Any]) -> dict[str, Any]:
    return {"signals": list(signals), "score": 2.4, "update": 1}


def test_flag_summary_says_what_happened_in_words() -> None:
    text = wording.flag_summary(_flag(RAGE, LOGIN))
    assert text.startswith("The client clicked “Pay now” on the /billing page 8 times in 1.2 s")
    assert "our sign-in service was unavailable" in text
    assert not any(code in text for code in CODES), text


@pytest.mark.parametrize("reason", ["bad_otp", "a_new_platform_code", None])
def test_a_reason_code_never_reaches_the_page(reason: str | None) -> None:
    signal = {**LOGIN, "evidence": {**LOGIN["evidence"], "last_reason": reason}}
    text = wording.flag_summary(_flag(signal))
    facts = " ".join(v for _, v in wording.signal_facts("failed_logins", signal["evidence"]))
    for shown in (text, facts):
        assert reason is None or reason not in shown
    if reason == "bad_otp":
        assert "the one-time code was not accepted" in text
    elif reason is not None:
        assert "another reason" in text  # an unknown code is not shown raw


def test_suggested_message_names_the_problem_and_takes_responsibility() -> None:
    messages = wording.load_messages()
    text = wording.suggested_message(messages, _flag(RAGE))
    assert "“Pay now” on the /billing page did not work for you" in text
    assert "our fault" in text and "sorry" in text
    ours = wording.suggested_message(messages, _flag(LOGIN))
    assert "problem on our side" in ours and "our sign-in service was unavailable" in ours
    assert "\n" not in text  # the file's line breaks are joined: it wraps on any screen


def test_messages_hold_only_our_own_fields(tmp_path: Path) -> None:
    """A template may only use {control}, {page} and {reason}; anything else, including a field
    an attacker put in the evidence, stays as written."""
    path = tmp_path / "messages.toml"
    path.write_text(
        '[rage_click]\ntext = "Hi {user_id}, {control} on {page} failed. {note}"\n'
        '[default]\ntext = "Hello."\n',
        encoding="utf-8",
    )
    messages = wording.load_messages(path)
    signal = {**RAGE, "evidence": {**RAGE["evidence"], "note": "client wrote this"}}
    text = wording.suggested_message(messages, _flag(signal))
    assert text == "Hi {user_id}, “Pay now” on /billing failed. {note}"


def test_incident_summary_counts_the_clients_the_queue_lists() -> None:
    incident = {
        "kind": "failed_logins",
        "cause": "failed_logins:service_unavailable",
        "affected_users": 25,
        "individual_users": 0,
        "clients_listed": 31,
    }
    text = wording.incident_summary(incident)
    assert text.startswith("31 clients could not sign in: our sign-in service was unavailable")
    assert "service_unavailable" not in text


def test_relative_times() -> None:
    assert wording.ago(10) == "just now"
    assert wording.ago(240) == "4 min ago"
    assert wording.ago(9000) == "2.5 h ago"
    assert wording.ago(3 * 86_400) == "3 days ago"

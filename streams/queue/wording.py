"""Every word an agent reads about a case, in one place: reason codes, kinds, outcomes and history
entries turned into plain words, and the evidence of a signal as readable facts.

The detectors speak in codes (`bad_otp`, `failed_logins:service_unavailable`, scores, update
numbers); none of that reaches an agent's page. A code missing from a table below is shown as
"other reason" rather than raw, so a new code from a platform never leaks through unread.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

#: Login failure reason codes (the platform's `reason` on failed logins) -> words.
LOGIN_REASONS: dict[str, str] = {
    "bad_password": "the password was not accepted",
    "wrong_password": "the password was not accepted",
    "bad_otp": "the one-time code was not accepted",
    "otp_expired": "the one-time code had expired",
    "expired_password": "the password had expired",
    "account_locked": "the account was locked",
    "locked": "the account was locked",
    "unknown_user": "the email or user name was not recognised",
    "captcha_failed": "the security check (captcha) failed",
    "rate_limited": "too many attempts: sign-in was paused",
    "service_unavailable": "our sign-in service was unavailable",
    "timeout": "our sign-in service did not answer in time",
    "server_error": "our sign-in service had an error",
    "sso_error": "the single sign-on provider had an error",
}

#: Failure reasons that are our fault, not the client's (the suggested message says so).
OUR_SIDE_REASONS = frozenset({"service_unavailable", "timeout", "server_error", "sso_error"})

KIND_WORDS: dict[str, str] = {
    "rage_click": "Clicked again and again",
    "failed_logins": "Locked out",
    "abrupt_chat_end": "Left a chat while waiting",
}

#: Security alert kinds (signals.flags.SecurityAlert.kind) -> words.
ALERT_KIND_WORDS: dict[str, str] = {
    "credential_stuffing": "One address trying many accounts",
    "brute_force": "One address hammering an account",
    "distributed_stuffing": "Many addresses trying many accounts",
}

CHAT_ENDINGS: dict[str, str] = {
    "user": "closed the chat",
    "system": "was cut off from the chat",
    "timeout": "timed out of the chat",
}

#: Resolve outcomes -> what the agent picks. The first four are the API's original names.
OUTCOME_WORDS: dict[str, str] = {
    "contacted": "Reached out to the client",
    "client_was_fine": "Reached out: the client was fine",
    "could_not_reach": "Tried, could not reach the client",
    "referred": "Referred to their therapist or clinical team",
    "no_contact_needed": "No contact needed",
    "duplicate": "Duplicate of another case",
    "false_positive": "Not frustration (false flag)",
}

SEVERITY_WORDS: dict[str, str] = {
    "low": "Low",
    "medium": "Medium",
    "high": "High",
    "critical": "Critical",
}

STATUS_WORDS: dict[str, str] = {"open": "Waiting", "claimed": "Being handled", "resolved": "Done"}

#: Queue history entries (flag_history.what, incident_history.what) -> words.
HISTORY_WORDS: dict[str, str] = {
    "flagged": "Flagged for outreach",
    "escalated": "More signs of frustration",
    "reopened": "New frustration after it was resolved",
    "grouped": "Grouped under an incident",
    "ungrouped": "Back to individual outreach (stronger evidence of its own)",
    "claimed": "Claimed",
    "unclaimed": "Given back to the queue",
    "reassigned": "Handed over",
    "note": "Note",
    "resolved": "Resolved",
    "opened": "Incident recognised",
    "closed": "The problem stopped",
    "update_sent": "Update sent to the clients",
}


def words(
    table: dict[str, str], code: str | None, missing: str = "other reason", unknown: str = ""
) -> str:
    """`code` in plain words from one of the tables above; never the raw code. `missing` when
    there is none, `unknown` (default: `missing`) for a code the table does not know."""
    if code is None:
        return missing
    return table.get(code, unknown or missing)


def duration(ms: float) -> str:
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 90:
        return f"{minutes:.0f} min"
    return f"{minutes / 60:.1f} h"


def ago(seconds: float) -> str:
    """A relative time as an agent says it: "just now", "4 min ago", "2.5 h ago", "3 days ago"."""
    if seconds < 45:
        return "just now"
    if seconds < 5400:
        return f"{max(1, round(seconds / 60))} min ago"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86_400:.0f} days ago"


def utc_text(epoch_s: float) -> str:
    """Server-side fallback for a <time>: the page's script shows it in the agent's zone."""
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_wire_ts(value: Any) -> float:
    """A flag's RFC 3339 time (or epoch ms) as epoch seconds."""
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return float(value) / 1000


def control_name(evidence: dict[str, Any]) -> str:
    if evidence.get("label"):
        return f"“{evidence['label']}”"
    if evidence.get("element") == "button":
        return "a button"
    return "one spot on the page"


def signal_sentence(kind: str, e: dict[str, Any]) -> str:
    """One clause about one signal, from its evidence only."""
    if kind == "rage_click":
        where = f" on the {e['page']} page" if e.get("page") else ""
        if e.get("rule") == "repeated_bursts":
            return (
                f"kept clicking {control_name(e)}{where}: {e['clicks']} clicks in "
                f"{e['bursts']} bursts within {duration(e['span_ms'])}"
            )
        return f"clicked {control_name(e)}{where} {e['clicks']} times in {duration(e['span_ms'])}"
    if kind == "failed_logins":
        why = words(LOGIN_REASONS, e.get("last_reason"), "no reason given", "another reason")
        return (
            f"tried to sign in {e['failures']} times in {duration(e['span_ms'])} and could not "
            f"({why}); no successful sign-in for {duration(e['waited_for_success_ms'])} after"
        )
    if kind == "abrupt_chat_end":
        ended = words(CHAT_ENDINGS, e.get("ended_by"), "left the chat")
        return f"{ended} after waiting {duration(e['waited_ms'])} for a reply"
    return "showed signs of frustration"


def signal_facts(kind: str, e: dict[str, Any]) -> list[tuple[str, str]]:
    """The evidence of one signal as (fact, value) rows."""
    if kind == "rage_click":
        facts = [
            ("Control", control_name(e)),
            ("Page", e.get("page") or "not known"),
            ("Clicks", f"{e['clicks']} in {duration(e['span_ms'])}"),
        ]
        if e.get("bursts", 1) > 1:
            facts.append(("Bursts", str(e["bursts"])))
        return facts
    if kind == "failed_logins":
        return [
            ("Sign-in attempts", f"{e['failures']} in {duration(e['span_ms'])}"),
            (
                "Why the last one failed",
                words(LOGIN_REASONS, e.get("last_reason"), "not given", "another reason"),
            ),
            ("No successful sign-in for", duration(e["waited_for_success_ms"])),
            ("Devices", str(e["distinct_devices"])),
            ("Networks", str(e["distinct_ips"])),
        ]
    if kind == "abrupt_chat_end":
        return [
            ("How it ended", words(CHAT_ENDINGS, e.get("ended_by"), "not known")),
            ("Waited for a reply", duration(e["waited_ms"])),
            ("Messages without an answer", str(e["unanswered_messages"])),
            ("Replies from us in the chat", str(e["agent_messages"])),
            ("Chat length", duration(e["duration_ms"])),
        ]
    return []


def flag_summary(flag: dict[str, Any]) -> str:
    """What happened, in one sentence: the latest signal of each kind, strongest first."""
    latest: dict[str, dict[str, Any]] = {}
    for s in flag.get("signals", []):
        latest[s["kind"]] = s
    ordered = sorted(latest.values(), key=lambda s: -float(s.get("strength", 0)))
    if not ordered:
        return "The client showed signs of frustration."
    text = "; and ".join(signal_sentence(s["kind"], s["evidence"]) for s in ordered)
    return f"The client {text}."


def incident_summary(incident: dict[str, Any]) -> str:
    """What the incident is, in words (its cause key and evidence text hold codes)."""
    kind = incident.get("kind")
    what = str(incident.get("cause", "")).partition(":")[2]
    # The record counts clients at its last emission (once a minute); the queue counts every
    # flag grouped since: the larger is the one the agent sees listed.
    recorded = incident.get("affected_users", 0) + incident.get("individual_users", 0)
    clients = max(recorded, incident.get("clients_listed", 0))
    if kind == "failed_logins":
        why = words(LOGIN_REASONS, what if what != "-" else None, "for the same reason")
        happened = f"could not sign in: {why}"
    elif kind == "rage_click":
        page = what.partition("|")[0]
        where = f" on the {page} page" if page and page != "-" else ""
        happened = f"kept clicking the same control{where}, which did not respond"
    else:
        happened = "left a chat while waiting for an answer"
    return f"{clients} clients {happened}, within minutes of each other."


# -- suggested messages ---------------------------------------------------------------------------
_FIELDS = ("control", "page", "reason")


class _Only(dict[str, str]):
    """Template values: only our own fields; anything else in a template stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def load_messages(path: Path | None = None) -> dict[str, str]:
    """The suggested first messages: the platform's file when set, else the built-in one."""
    if path is not None:
        text = Path(path).read_text(encoding="utf-8")
    else:
        text = resources.files("streams.queue").joinpath("messages.toml").read_text("utf-8")
    data = tomllib.loads(text)
    return {str(k): _paragraphs(str(v["text"])) for k, v in data.items() if isinstance(v, dict)}


def _paragraphs(text: str) -> str:
    """A template as the agent copies it: the file's line breaks joined, blank lines kept as
    paragraph breaks (so the message wraps to any screen, and pastes as prose)."""
    paragraphs = [" ".join(p.split()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def message_key(kind: str, evidence: dict[str, Any]) -> str:
    if kind == "failed_logins":
        ours = evidence.get("last_reason") in OUR_SIDE_REASONS
        return "failed_logins_our_side" if ours else "failed_logins"
    return kind


def suggested_message(messages: dict[str, str], flag: dict[str, Any]) -> str:
    """The first message for a case: its strongest signal's template, filled with facts only
    (the control's label and the page come from the platform's own page, never from the client)."""
    signals = sorted(flag.get("signals", []), key=lambda s: -float(s.get("strength", 0)))
    if not signals:
        return messages.get("default", "")
    kind, e = signals[0]["kind"], signals[0]["evidence"]
    template = messages.get(message_key(kind, e)) or messages.get("default", "")
    values = _Only(
        control=control_name(e) if kind == "rage_click" else "",
        page=e.get("page") or "our site",
        reason=words(LOGIN_REASONS, e.get("last_reason"), "something went wrong"),
    )
    return template.format_map(values)


def incident_message(messages: dict[str, str], incident: dict[str, Any]) -> str:
    kind = str(incident.get("kind"))
    what = str(incident.get("cause", "")).partition(":")[2]
    key = f"incident_{kind}"
    page = what.partition("|")[0] if kind == "rage_click" else ""
    values = _Only(
        control="a button",
        page=page if page and page != "-" else "our site",
        reason=words(LOGIN_REASONS, what, "something went wrong"),
    )
    template = messages.get(key) or messages.get("default", "")
    return template.format_map(values)

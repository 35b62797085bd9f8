"""Helpdesk-shaped webhook bodies: a Zendesk ticket for a flag or an incident, a Slack
incoming-webhook message for incidents and security alerts.

Built from the same public JSON the standard webhook carries. The case summary and the suggested
message of a flag come from `case_summary` and `suggested_message` below: small stand-ins until
the agent-workspace issue's wording module (streams/queue/wording.py) exists; then these two
functions call it, and nothing else here changes. Metadata only: no chat text exists to leak.
"""

from __future__ import annotations

from typing import Any

#: Zendesk ticket priority by flag severity.
ZENDESK_PRIORITY = {"critical": "urgent", "high": "high", "medium": "normal", "low": "low"}

_KIND_WORDS = {
    "rage_click": "clicked the same control again and again",
    "failed_logins": "failed to sign in several times",
    "abrupt_chat_end": "left a chat abruptly",
}
_MESSAGES = {
    "rage_click": "Hi, it looks like something on our site may not have worked for you just now. "
    "We're sorry about that. Would you like us to help you finish what you were doing?",
    "failed_logins": "Hi, we noticed you may have had trouble signing in. If you'd like, we can "
    "help you get back into your account. Just reply to this message.",
    "abrupt_chat_end": "Hi, your chat with us ended suddenly and we wanted to check in. If "
    "there is anything you still need, we are here for you whenever you are ready.",
}
_DEFAULT_MESSAGE = "Hi, we wanted to check in and see whether we can help with anything."


def _kinds(flag: dict[str, Any]) -> list[str]:
    kinds = flag.get("kinds") or sorted({s["kind"] for s in flag.get("signals", [])})
    return [str(k) for k in kinds]


def case_summary(flag: dict[str, Any]) -> str:
    """A few plain sentences for the agent: what the client went through, how sure we are.
    (Stand-in for streams.queue.wording's case summary, issue 13.)"""
    kinds = _kinds(flag)
    what = "; ".join(_KIND_WORDS.get(k, k.replace("_", " ")) for k in kinds) or "no signal"
    counts = ", ".join(
        f"{k.replace('_', ' ')} ×{sum(1 for s in flag.get('signals', []) if s['kind'] == k)}"
        for k in kinds
    )
    return (
        f"{flag.get('reason', '').strip()}\n"
        f"The client {what}. Severity {flag.get('severity')}, score "
        f"{float(flag.get('score', 0.0)):.2f} ({counts}). Flag {flag.get('flag_id')}, "
        f"update {flag.get('update', 0)}."
    )


def suggested_message(flag: dict[str, Any]) -> str:
    """A gentle first message to the client, by the flag's main signal.
    (Stand-in for streams.queue.wording's suggested message, issue 13.)"""
    signals = flag.get("signals", [])
    if not signals:
        return _DEFAULT_MESSAGE
    main = max(signals, key=lambda s: float(s.get("strength", 0.0)))
    return _MESSAGES.get(str(main["kind"]), _DEFAULT_MESSAGE)


def zendesk_ticket(event_type: str, data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A Zendesk "create ticket" body (POST /api/v2/tickets) and its idempotency key (the
    flag_id or incident_id: a re-sent delivery makes no second ticket)."""
    if event_type.startswith("flag."):
        kinds = _kinds(data)
        comment = (
            f"{case_summary(data)}\n\nSuggested message to the client:\n{suggested_message(data)}"
        )
        ticket: dict[str, Any] = {
            "external_id": data["flag_id"],
            "subject": f"Frustration signal: {', '.join(k.replace('_', ' ') for k in kinds)}",
            "comment": {"body": comment, "public": False},
            "priority": ZENDESK_PRIORITY.get(str(data.get("severity")), "normal"),
            "tags": ["frustration_signals", *kinds, f"severity_{data.get('severity')}"],
            "requester": {
                "external_id": data["user_id"],
                "name": f"Client {data['user_id']}",
            },
        }
        return {"ticket": ticket}, str(data["flag_id"])
    clients = int(data.get("affected_users", 0)) + int(data.get("individual_users", 0))
    ticket = {
        "external_id": data["incident_id"],
        "subject": f"Incident: {str(data.get('kind', '')).replace('_', ' ')} ({clients} clients)",
        "comment": {
            "body": f"{data.get('evidence', '')}\n\nSuggested bulk message:\n"
            f"{data.get('message', '')}\n\nCause: {data.get('cause')}",
            "public": False,
        },
        "priority": "high",
        "tags": ["frustration_signals", "incident", str(data.get("kind"))],
    }
    return {"ticket": ticket}, str(data["incident_id"])


def slack_message(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body (text plus one section block) for an incident or alert."""
    if event_type.startswith("incident."):
        state = {
            "incident.opened": "opened",
            "incident.updated": "updated",
            "incident.closed": "closed",
        }[event_type]
        clients = int(data.get("affected_users", 0)) + int(data.get("individual_users", 0))
        text = (
            f":rotating_light: Incident {state}: {str(data.get('kind', '')).replace('_', ' ')}, "
            f"{clients} clients. {data.get('evidence', '')}"
        )
        detail = f"*Suggested bulk message:* {data.get('message', '')}\n`{data.get('cause')}`"
    else:
        source = data.get("ip") or f"{data.get('distinct_ips') or 0} sources"
        text = (
            f":lock: Security alert: {str(data.get('kind', '')).replace('_', ' ')} from "
            f"{source}, {data.get('distinct_accounts')} accounts."
        )
        detail = f"Alert `{data.get('alert_id')}`: for the security team, not for outreach."
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": f"{text}\n{detail}"}}],
    }

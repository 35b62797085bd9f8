"""Helpdesk-shaped webhook bodies: a Zendesk ticket for a flag or an incident, a Slack
incoming-webhook message for incidents and security alerts.

Built from the same public JSON the standard webhook carries. The case summary and the suggested
message of a flag are the agent workspace's own (streams/queue/wording.py and the platform's
message templates), so a ticket says what the case page says. Metadata only: no chat text exists
to leak.
"""

from __future__ import annotations

import functools
from typing import Any

from streams.queue import wording
from streams.queue.wording import SEVERITY_WORDS

#: Zendesk ticket priority by flag severity.
ZENDESK_PRIORITY = {"critical": "urgent", "high": "high", "medium": "normal", "low": "low"}


def _kinds(flag: dict[str, Any]) -> list[str]:
    kinds = flag.get("kinds") or sorted({s["kind"] for s in flag.get("signals", [])})
    return [str(k) for k in kinds]


def case_summary(flag: dict[str, Any]) -> str:
    """What the client went through, in the agent workspace's words (streams/queue/wording.py):
    the same sentence the case page leads with, and how urgent it is."""
    severity = SEVERITY_WORDS.get(str(flag.get("severity")), str(flag.get("severity")))
    return f"{wording.flag_summary(flag)}\nSeverity: {severity}. Case {flag.get('flag_id')}."


def suggested_message(flag: dict[str, Any], messages: dict[str, str] | None = None) -> str:
    """The case page's suggested first message for this kind of case, from the platform's
    templates (`FRUSTRATION_MESSAGES_PATH`) or the built-in ones."""
    return wording.suggested_message(messages or _builtin_messages(), flag)


@functools.cache
def _builtin_messages() -> dict[str, str]:
    return wording.load_messages()


def zendesk_ticket(
    event_type: str, data: dict[str, Any], messages: dict[str, str] | None = None
) -> tuple[dict[str, Any], str]:
    """A Zendesk "create ticket" body (POST /api/v2/tickets) and its idempotency key (the
    flag_id or incident_id: a re-sent delivery makes no second ticket)."""
    if event_type.startswith("flag."):
        kinds = _kinds(data)
        message = suggested_message(data, messages)
        comment = f"{case_summary(data)}\n\nSuggested message to the client:\n{message}"
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

"""The server-rendered pages: the inbox (`/queue`), a case page per flag (`/queue/flags/{id}`), an
incident page (`/queue/incidents/{id}`) for support agents, and `/ops` for platform ops and leads.

Small HTML, no front-end build. One script file (`/assets/app.js`, allowed by the CSP as 'self';
no inline script) shows times in the agent's own time zone and keeps the inbox's list live
without touching a form the agent is typing in. Every value is escaped; every word about a case
comes from `streams.queue.wording` (no reason codes, scores or update numbers reach an agent).
Incidents (many clients, one cause) head the inbox as one item each; their grouped flags are not
listed one by one.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any
from urllib.parse import urlencode

from detectors.engine import EngineStats
from signals.flags import SEVERITIES, SIGNAL_KINDS
from streams.queue import webhooks, wording
from streams.queue.feed import QueueFeed
from streams.queue.security import Identity
from streams.queue.store import OUTCOMES, STATUSES, QueueError, QueueStore
from streams.queue.wording import (
    HISTORY_WORDS,
    KIND_WORDS,
    OUTCOME_WORDS,
    ago,
    flag_summary,
    incident_summary,
)


@dataclass(frozen=True, slots=True)
class PageContext:
    """What every page needs to know about the request."""

    identity: Identity
    csrf: str
    me: str | None  # the signed-in agent, or the name this browser last typed
    flash: str | None = None
    refresh_s: float = 10.0
    messages: dict[str, str] = field(default_factory=dict)
    update_interval_s: float = 7200.0
    now: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Filters:
    """The inbox's filters, from its query string."""

    severity: str = "low"
    kind: str = ""
    status: str = "active"  # open and claimed
    q: str = ""
    mine: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> Filters:
        severity = query.get("severity", "low")
        kind = query.get("kind", "")
        status = query.get("status", "active")
        return cls(
            severity=severity if severity in SEVERITIES else "low",
            kind=kind if kind in SIGNAL_KINDS else "",
            status=status if status in (*STATUSES, "active", "all") else "active",
            q=query.get("q", "").strip()[:64],
            mine=query.get("mine", "") in ("1", "on", "yes"),
        )

    def query(self) -> str:
        pairs = {
            "severity": self.severity if self.severity != "low" else "",
            "kind": self.kind,
            "status": self.status if self.status != "active" else "",
            "q": self.q,
            "mine": "1" if self.mine else "",
        }
        return urlencode({k: v for k, v in pairs.items() if v})

    @property
    def narrowed(self) -> bool:
        return bool(self.query())


# -- layout ---------------------------------------------------------------------------------------
def _layout(title: str, body: str, context: PageContext, live: str = "") -> str:
    if context.identity.agent is not None:
        who = f"Signed in as <b>{escape(context.identity.agent)}</b>"
    elif context.me:
        who = f"Working as <b>{escape(context.me)}</b> (name typed on this browser)"
    else:
        who = "Shared access: type your name when you claim a case"
    flash = f"<div class=flash role=alert>{escape(context.flash)}</div>" if context.flash else ""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · frustration-signals</title>"
        '<link rel=stylesheet href="/assets/app.css"><script src="/assets/app.js" defer></script>'
        f"</head><body><header><h1>{escape(title)}</h1><nav><a href=/queue>Support queue</a>"
        f"<a href=/ops>Operations</a></nav><span class=who>{who}</span>{live}</header>"
        f"<main>{flash}{body}</main></body></html>"
    )


def _alert_source(alert: dict[str, Any]) -> str:
    """The attacking address, or for an attack spread over many addresses (no single one) how
    many."""
    return str(alert["ip"]) if alert["ip"] else f"{alert.get('distinct_ips') or 0} addresses"


def _time(epoch_s: float, now: float) -> str:
    """A time the page's script shows in the agent's zone, with how long ago."""
    iso = wording.iso(epoch_s)
    return (
        f'<time datetime="{iso}">{wording.utc_text(epoch_s)}</time> '
        f'<span class=ago data-ago="{iso}">{ago(now - epoch_s)}</span>'
    )


def _waiting(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _status(status: str) -> str:
    """open / claimed / resolved as the agent says it (Waiting, Being handled, Done)."""
    return escape(wording.words(wording.STATUS_WORDS, status, status))


def _client_status(client: dict[str, Any]) -> str:
    """A client of an incident: covered by its bulk message, or a case of their own."""
    if client["grouped"] and client["status"] == "open":
        return "covered by the bulk message"
    own = "" if client["grouped"] else " (a case of their own)"
    return _status(client["status"]) + own


def _sev(severity: str) -> str:
    return f'<span class="sev {escape(severity)}">{escape(severity)}</span>'


def _hidden(context: PageContext, back: str) -> str:
    return (
        f'<input type=hidden name=csrf value="{escape(context.csrf)}">'
        f'<input type=hidden name=back value="{escape(back)}">'
    )


def _name_field(context: PageContext, name: str = "agent", placeholder: str = "your name") -> str:
    """The typed name, only where the deployment cannot tell who the agent is."""
    if context.identity.agent is not None:
        return ""
    value = f' value="{escape(context.me)}"' if context.me else ""
    return (
        f'<input name={name} placeholder="{placeholder}" aria-label="{placeholder}" '
        f"required size=10 maxlength=64{value}>"
    )


def _outcome_select() -> str:
    # No outcome is preselected: a case resolved without reading the list would teach /ops's
    # false-flag share nothing (the browser asks for a choice first).
    options = "".join(f'<option value="{o}">{escape(OUTCOME_WORDS[o])}</option>' for o in OUTCOMES)
    return (
        '<select name=outcome aria-label="outcome" required>'
        f'<option value="" selected disabled>How did it end?</option>{options}</select>'
    )


def _claim_form(path: str, context: PageContext, back: str, label: str = "Claim") -> str:
    return (
        f'<form method=post action="{path}/claim">{_hidden(context, back)}'
        f"{_name_field(context)}<button>{label}</button></form>"
    )


def _resolve_form(path: str, context: PageContext, back: str) -> str:
    return (
        f'<form method=post action="{path}/resolve" class=resolve>{_hidden(context, back)}'
        f"{_outcome_select()}"
        '<input name=note placeholder="short note" aria-label="note" maxlength=500 size=14>'
        "<button>Resolve</button></form>"
    )


def _holds(item: dict[str, Any], context: PageContext) -> bool:
    """The agent looking holds this item (or the deployment cannot tell: then anyone may act)."""
    if context.identity.agent is None:
        return True
    return bool(item.get("claimed_by") == context.identity.agent)


def _actions(path: str, item: dict[str, Any], context: PageContext, back: str) -> str:
    """Claim (open) or resolve and give back (claimed) for a flag or an incident at `path`."""
    if item["status"] == "open":
        return _claim_form(path, context, back)
    if item["status"] == "resolved":
        return (
            f"<span class=muted>{escape(OUTCOME_WORDS.get(item['outcome'] or '', 'done'))}</span>"
        )
    held = f"<span class=holder>claimed by {escape(item['claimed_by'] or '?')}</span>"
    if not _holds(item, context):
        return held
    unclaim = (
        f'<form method=post action="{path}/unclaim">{_hidden(context, back)}'
        "<button class=quiet>Give back</button></form>"
        if path.startswith("/v1/flags/")
        else ""
    )
    return f"{held}{_resolve_form(path, context, back)}{unclaim}"


# -- the inbox ------------------------------------------------------------------------------------
#: Clients listed inline under an incident on /queue; the rest are one link away.
LISTED_CLIENTS = 60


def _incident_rows(store: QueueStore, context: PageContext, filters: Filters, back: str) -> str:
    rows = []
    for item in store.list_incidents(limit=50):
        if item["status"] == "resolved" and filters.status != "resolved":
            continue
        if filters.kind and item["kind"] != filters.kind:
            continue
        if filters.mine and item["claimed_by"] != context.me:
            continue
        iid = escape(item["incident_id"])
        shown = store.get_incident(item["incident_id"])
        clients = shown["clients"]
        if filters.q and not any(filters.q.lower() in c["user_id"].lower() for c in clients):
            continue
        grouped = item["clients_grouped"]
        individually = len(clients) - grouped
        listed = "".join(
            f'<li><a href="/queue/flags/{escape(c["flag_id"])}"><code>{escape(c["user_id"])}'
            f"</code></a> <span class=muted>{escape(c['severity'])}, {_status(c['status'])}"
            f"{'' if c['grouped'] else ', individual'}</span></li>"
            for c in clients[:LISTED_CLIENTS]
        )
        more = (
            f'<li><a href="/queue/incidents/{iid}">all {len(clients)}</a></li>'
            if len(clients) > LISTED_CLIENTS
            else ""
        )
        state = "still happening" if item["state"] == "open" else "over"
        extra = f" (+{individually} handled individually)" if individually else ""
        due = store.incident_update_due(item, context.update_interval_s)
        due_html = ""
        if due is not None:
            overdue = due < context.now
            due_html = (
                f'<span class="{"overdue" if overdue else "due"}">'
                f"{'Update to clients overdue since' if overdue else 'Next update to clients due'} "
                f"{_time(due, context.now)}</span>"
            )
        message = wording.incident_message(context.messages, item)
        rows.append(
            f'<tr class=incident data-key="inc-{iid}" data-incident-id="{iid}">'
            f"<td><b>incident</b><br>{escape(KIND_WORDS[item['kind']])}</td>"
            f"<td><b class=count>{grouped}</b> clients{extra}</td>"
            f"<td>{escape(incident_summary(item))}<br><span class=muted>{state} · since "
            f"{_time(wording.parse_wire_ts(item['first_seen_ts']), context.now)} · "
            f'<a href="/queue/incidents/{iid}">open incident</a></span><br>{due_html}'
            f"<blockquote>{escape(message)}</blockquote>"
            f"<details><summary>Affected clients ({len(clients)})</summary><ul>{listed}{more}"
            f"</ul></details></td><td>{_waiting(context.now - item['created_at'])}</td>"
            f"<td>{_status(item['status'])}</td>"
            f"<td>{_actions(f'/v1/incidents/{iid}', item, context, back)}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>Incidents: one message for many clients</h2><table class=rows><thead><tr>"
        "<th>Incident</th><th>Clients</th><th>What happened · suggested message</th>"
        "<th>Waiting</th><th>Status</th><th></th></tr></thead>"
        f"<tbody id=incident-list data-list>{''.join(rows)}</tbody></table>"
    )


def _statuses(filters: Filters) -> tuple[Any, ...] | None:
    if filters.status == "active":
        return ("open", "claimed")
    if filters.status == "all":
        return None
    return (filters.status,)


def inbox_list(store: QueueStore, context: PageContext, filters: Filters) -> str:
    """The inbox's list: incidents, then individual cases, then security alerts."""
    back = "/queue" + (f"?{filters.query()}" if filters.narrowed else "")
    if filters.mine and not context.me:
        mine_note = "<p class=flash>Type your name on a claim first: “mine” needs to know you.</p>"
    else:
        mine_note = ""
    flags = store.list_flags(
        min_severity=filters.severity,
        limit=300,
        statuses=_statuses(filters),
        kind=filters.kind or None,
        user_search=filters.q or None,
        claimed_by=(context.me or "") if filters.mine else None,
    )
    rows = []
    for f in flags:
        fid = escape(f["flag_id"])
        rows.append(
            f'<tr data-key="flag-{fid}"><td class=meta>{_sev(f["severity"])}</td>'
            f"<td class=meta data-label=waiting>{_waiting(context.now - f['created_at'])}</td>"
            f'<td class="meta client"><a href="/queue/flags/{fid}"><code>{escape(f["user_id"])}'
            f"</code></a></td><td>{escape(flag_summary(f))}<br>"
            f'<a class=open-case href="/queue/flags/{fid}">open case</a></td>'
            f"<td class=status>{_status(f['status'])}</td>"
            f"<td>{_actions(f'/v1/flags/{fid}', f, context, back)}</td></tr>"
        )
    empty = "No case matches these filters." if filters.narrowed else "No one is waiting right now."
    table = (
        "<table class=rows><thead><tr><th>Severity</th><th>Waiting</th><th>Client</th>"
        "<th>What happened</th><th>Status</th><th></th></tr></thead>"
        f"<tbody id=flag-list data-list>{''.join(rows)}</tbody></table>"
        if rows
        else f"<p class=empty>{empty}</p>"
    )
    alerts = store.list_alerts(limit=20)
    alert_rows = "".join(
        f"<tr><td>{_time(wording.parse_wire_ts(a['ts']), context.now)}</td>"
        f"<td>{escape(wording.words(wording.ALERT_KIND_WORDS, a.get('kind'), 'login attack'))}</td>"
        f"<td><code>{escape(_alert_source(a))}</code></td>"
        f"<td>{a['distinct_accounts']} accounts, {a['failures']} failed sign-ins</td></tr>"
        for a in alerts
    )
    alert_html = (
        "<h2>Security alerts (attacks on sign-in: for the security team, not for outreach)</h2>"
        "<table class=rows><thead><tr><th>When</th><th>Kind</th><th>Source address</th>"
        f"<th>Scale</th></tr></thead><tbody>{alert_rows}</tbody></table>"
        if alerts
        else ""
    )
    counts = store.counts(context.now)
    summary = (
        f"<p class=muted>{counts.by_status['open']} waiting, {counts.by_status['claimed']} being "
        f"handled; the longest has waited {_waiting(counts.oldest_open_age_s)}. Incidents first, "
        "then highest severity, then longest waiting.</p>"
    )
    incidents = _incident_rows(store, context, filters, back)
    return summary + mine_note + incidents + "<h2>Individual outreach</h2>" + table + alert_html


def _filter_form(filters: Filters) -> str:
    def options(values: list[tuple[str, str]], chosen: str) -> str:
        return "".join(
            f'<option value="{v}"{" selected" if v == chosen else ""}>{escape(t)}</option>'
            for v, t in values
        )

    severities = [("low", "any severity")] + [(s, f"{s} and above") for s in SEVERITIES[1:]]
    kinds = [("", "any kind")] + [(k, KIND_WORDS[k]) for k in SIGNAL_KINDS]
    statuses = [
        ("active", "waiting or being handled"),
        ("open", "waiting"),
        ("claimed", "being handled"),
        ("resolved", "resolved"),
        ("all", "all"),
    ]
    return (
        "<form method=get action=/queue class=filters role=search>"
        f'<select name=severity aria-label="severity">{options(severities, filters.severity)}'
        f'</select><select name=kind aria-label="kind">{options(kinds, filters.kind)}</select>'
        f'<select name=status aria-label="status">{options(statuses, filters.status)}</select>'
        f'<input type=search name=q value="{escape(filters.q)}" placeholder="client id" '
        'aria-label="search by client id" size=12>'
        f"<label><input type=checkbox name=mine value=1{' checked' if filters.mine else ''}> "
        "mine</label><button>Filter</button>"
        + ("<a href=/queue>clear</a>" if filters.narrowed else "")
        + "</form>"
    )


def queue_page(store: QueueStore, context: PageContext, filters: Filters | None = None) -> str:
    filters = filters or Filters()
    src = "/queue/list" + (f"?{filters.query()}" if filters.narrowed else "")
    live = f"<span class=muted>updates every {context.refresh_s:g} s</span>"
    body = (
        _filter_form(filters)
        + f'<div id=inbox data-src="{escape(src)}" data-refresh="{context.refresh_s:g}">'
        + inbox_list(store, context, filters)
        + "</div>"
    )
    return _layout("Support queue", body, context, live)


# -- a case ---------------------------------------------------------------------------------------
def _history_rows(history: list[dict[str, Any]], now: float, note: str | None = None) -> str:
    """Newest first; `note` is the item's resolution note (shown with its last resolution)."""
    rows = []
    last_resolved = max((h["seq"] for h in history if h["what"] == "resolved"), default=None)
    for h in reversed(history):
        what = HISTORY_WORDS.get(h["what"], "Changed")
        detail = h.get("detail")
        if h["what"] == "resolved":
            outcome = (detail or "").split(" ")[0].split(";")[0]
            text = OUTCOME_WORDS.get(outcome, "resolved")
            if note and h["seq"] == last_resolved:
                text += f": {note}"
        elif h["what"] in ("note", "update_sent"):
            text = detail or ""
        elif h["what"] == "reassigned":
            text = (detail or "").replace(" -> ", " → ")
        elif h["what"] in ("flagged", "escalated", "reopened"):
            text = f"Severity: {h.get('severity')}" if h.get("severity") else ""
        elif h["what"] == "grouped":
            text = ""
        else:
            text = ""
        who = f" · {escape(h['agent'])}" if h.get("agent") else ""
        rows.append(
            f"<li><span class=when>{_time(h['at'], now)}</span> <b>{escape(what)}</b>{who}"
            + (f"<br><span class=detail>{escape(text)}</span>" if text else "")
            + "</li>"
        )
    return f"<ol class=timeline>{''.join(rows)}</ol>"


def _case_actions(flag: dict[str, Any], context: PageContext) -> str:
    fid = escape(flag["flag_id"])
    path = f"/v1/flags/{fid}"
    back = f"/queue/flags/{fid}"
    if flag["status"] == "open":
        return _claim_form(path, context, back, "Claim this case")
    if flag["status"] == "resolved":
        by = f" by {escape(flag['resolved_by'])}" if flag.get("resolved_by") else ""
        return (
            f"<p>Resolved{by}: {escape(OUTCOME_WORDS.get(flag['outcome'] or '', 'done'))} "
            f"{_time(flag['resolved_at'] or context.now, context.now)}</p>"
        )
    holder = escape(flag["claimed_by"] or "?")
    held = f"<p class=holder>claimed by {holder} {_time(flag['claimed_at'], context.now)}</p>"
    if not _holds(flag, context):
        return held + "<p class=muted>Only the agent holding a case can resolve it.</p>"
    return (
        held
        + "<div class=act><span class=label>Done with it:</span>"
        + _resolve_form(path, context, back)
        + "</div><div class=act><span class=label>For the next person:</span>"
        + f'<form method=post action="{path}/notes">{_hidden(context, back)}'
        '<input name=note placeholder="add a note" aria-label="add a note" maxlength=500 '
        "size=24 required><button>Add note</button></form></div>"
        + "<div class=act><span class=label>Someone else should take it:</span>"
        + f'<form method=post action="{path}/reassign">{_hidden(context, back)}'
        '<input name=to placeholder="hand over to" aria-label="hand over to" maxlength=64 '
        "size=12 required><button>Hand over</button></form>"
        + f'<form method=post action="{path}/unclaim">{_hidden(context, back)}'
        "<button class=quiet>Give back to the queue</button></form></div>"
    )


def _signal_html(signal: dict[str, Any], now: float) -> str:
    facts = "".join(
        f"<tr><th>{escape(k)}</th><td>{escape(v)}</td></tr>"
        for k, v in wording.signal_facts(signal["kind"], signal["evidence"])
    )
    return (
        f"<li><span class=when>{_time(wording.parse_wire_ts(signal['ts']), now)}</span> "
        f"<b>{escape(KIND_WORDS.get(signal['kind'], 'Frustration'))}</b>: "
        f"{escape(wording.signal_sentence(signal['kind'], signal['evidence']))}"
        f"<table class=facts>{facts}</table></li>"
    )


def _client_history(store: QueueStore, flag: dict[str, Any], now: float) -> str:
    history = store.client_history(flag["user_id"])
    earlier = [f for f in history["flags"] if f["flag_id"] != flag["flag_id"]]
    flag_rows = "".join(
        f'<tr><td>{_time(f["created_at"], now)}</td><td><a href="/queue/flags/'
        f'{escape(f["flag_id"])}">{escape(flag_summary(f))}</a></td>'
        f"<td>{escape(OUTCOME_WORDS.get(f['outcome'] or '', f['status']))}"
        f"{' · ' + escape(f['resolved_by']) if f.get('resolved_by') else ''}</td></tr>"
        for f in earlier
    )
    incident_rows = "".join(
        f'<tr><td>{_time(i["created_at"], now)}</td><td><a href="/queue/incidents/'
        f'{escape(i["incident_id"])}">{escape(incident_summary(i))}</a></td>'
        f"<td>{escape(OUTCOME_WORDS.get(i['outcome'] or '', i['status']))}</td></tr>"
        for i in history["incidents"]
    )
    parts = ["<h2>This client's history</h2>"]
    parts.append(
        "<h3>Earlier cases</h3><table class=rows><tbody>" + flag_rows + "</tbody></table>"
        if flag_rows
        else "<p>No earlier case for this client.</p>"
    )
    parts.append(
        "<h3>Incidents they were part of</h3><table class=rows><tbody>"
        + incident_rows
        + "</tbody></table>"
        if incident_rows
        else "<p>Not part of any incident.</p>"
    )
    parts.append(
        "<p class=muted>Security alerts: alerts name the source address that tried many "
        "accounts, not the accounts, so none is linked to this client here.</p>"
    )
    return "".join(parts)


def flag_page(store: QueueStore, context: PageContext, flag_id: str) -> str:
    flag = store.get_flag(flag_id)
    now = context.now
    signals = "".join(_signal_html(s, now) for s in reversed(flag.get("signals", [])))
    message = wording.suggested_message(context.messages, flag)
    incident = ""
    if flag.get("incident_id"):
        iid = escape(flag["incident_id"])
        incident = (
            f'<p class=note>Part of an <a href="/queue/incidents/{iid}">incident</a>: many '
            "clients hit the same problem; the incident's bulk message covers this client.</p>"
        )
    body = (
        f"<section class=case><p class=lead>{_sev(flag['severity'])} "
        f"Client <code>{escape(flag['user_id'])}</code> · {_status(flag['status'])} · "
        f"flagged {_time(flag['created_at'], now)}</p>"
        f"<p class=summary>{escape(flag_summary(flag))}</p>{incident}"
        f"<div class=actions>{_case_actions(flag, context)}</div></section>"
        "<section><h2>Suggested first message</h2>"
        f"<blockquote id=suggested>{escape(message)}</blockquote>"
        "<p class=muted><button type=button data-copy=suggested>Copy</button> Read it through "
        "and make it yours before sending; add nothing the client has not told you.</p></section>"
        f"<section><h2>What we saw</h2><ol class=signals>{signals}</ol></section>"
        "<section><h2>Timeline of this case</h2>"
        f"{_history_rows(flag['history'], now, flag.get('note'))}</section>"
        f"<section>{_client_history(store, flag, now)}</section>"
    )
    return _layout(f"Case: {flag['user_id']}", body, context)


def incident_page(store: QueueStore, context: PageContext, incident_id: str) -> str:
    item = store.get_incident(incident_id)
    now = context.now
    iid = escape(item["incident_id"])
    path = f"/v1/incidents/{iid}"
    back = f"/queue/incidents/{iid}"
    state = "still happening" if item["state"] == "open" else "over"
    due = store.incident_update_due(item, context.update_interval_s)
    if due is None:
        due_html = "<p>Resolved: no more updates due.</p>"
    else:
        overdue = due < now
        due_html = (
            f'<p class="{"overdue" if overdue else "due"}">'
            + (
                "The update to clients is overdue since"
                if overdue
                else "Next update to clients due"
            )
            + f" {_time(due, now)}</p>"
            + f'<form method=post action="{path}/updates">{_hidden(context, back)}'
            '<input name=note placeholder="what the update said" aria-label="update note" '
            "maxlength=500 size=28><button>Record update sent</button></form>"
        )
    clients = "".join(
        f'<tr><td><a href="/queue/flags/{escape(c["flag_id"])}"><code>{escape(c["user_id"])}'
        f"</code></a></td><td>{_sev(c['severity'])}</td><td>{_client_status(c)}</td></tr>"
        for c in item["clients"]
    )
    message = wording.incident_message(context.messages, item)
    body = (
        f"<section class=case><p class=lead><b>{escape(KIND_WORDS[item['kind']])}</b> · "
        f"{state} · since {_time(wording.parse_wire_ts(item['first_seen_ts']), now)}</p>"
        f"<p class=summary>{escape(incident_summary(item))}</p>"
        f"<p><b class=count>{item['clients_grouped']}</b> clients wait for the bulk message."
        f"</p><div class=actions>{_actions(path, item, context, back)}</div>{due_html}</section>"
        "<section><h2>Bulk message</h2>"
        f"<blockquote id=suggested>{escape(message)}</blockquote>"
        "<p class=muted><button type=button data-copy=suggested>Copy</button></p></section>"
        "<section><h2>Timeline</h2>"
        f"{_history_rows(item['history'], now, item.get('note'))}</section>"
        f"<section><h2>Clients ({len(item['clients'])})</h2><table class=rows><thead><tr>"
        f"<th>Client</th><th>Severity</th><th>Status</th></tr></thead><tbody>{clients}"
        "</tbody></table></section>"
    )
    return _layout(f"Incident: {KIND_WORDS[item['kind']]}", body, context)


def not_found(context: PageContext, what: str) -> str:
    body = f"<p>This {what} is not in the queue. <a href=/queue>Back to the queue</a></p>"
    return _layout("Not found", body, context)


# -- operations -----------------------------------------------------------------------------------
#: Detector rules, as /ops names them in the false-flag table.
RULE_WORDS = {"burst": "one burst", "repeated_bursts": "repeated bursts"}


def _share(n_false: int, n: int) -> str:
    if n == 0:
        return "<span class=muted>none resolved</span>"
    return f"{100 * n_false / n:.0f} % <span class=muted>({n_false} of {n})</span>"


def ops_page(feed: QueueFeed, context: PageContext) -> str:
    now = context.now
    activity = feed.activity
    last_minute = sum(n for t, n in activity.events if t >= now - 60)
    signals_10m = Counter(kind for t, kind in activity.signals if t >= now - 600)
    store = feed.store
    counts = store.counts(now)
    interval = feed.settings.incident_update_interval_s
    overdue = store.overdue_incident_updates(now, interval)
    # The queue sink has no engine (the workers have theirs): its figures show as zero.
    stats = feed.engine.stats if feed.engine is not None else EngineStats()
    cards = [
        ("events / s (last minute)", f"{last_minute / 60:.1f}"),
        ("tracked users", f"{len(feed.engine.users) if feed.engine is not None else 0}"),
        ("open queue items (flags, incidents)", f"{counts.by_status['open']}"),
        ("claimed queue items", f"{counts.by_status['claimed']}"),
        ("oldest open queue item", _waiting(counts.oldest_open_age_s)),
        ("late events (total)", f"{stats.late}"),
        ("duplicate events (total)", f"{stats.duplicates}"),
        ("security alerts (total)", f"{stats.alerts}"),
        ("open incidents", f"{sum(counts.open_incidents.values())}"),
        ("incident updates overdue", f"{sum(overdue.values())}"),
    ]
    cards_html = "".join(
        f'<div class="card{" alarm" if k == "incident updates overdue" and v != "0" else ""}">'
        f"<b>{v}</b>{escape(k)}</div>"
        for k, v in cards
    )
    signal_rows = "".join(
        f"<tr><td>{k.replace('_', ' ')}</td><td>{signals_10m[k] / 10:.1f}</td>"
        f"<td>{stats.signals[k]}</td></tr>"
        for k in SIGNAL_KINDS
    )
    severity_rows = "".join(
        f"<tr><td>{_sev(s)}</td><td>{counts.open_by_severity[s]}</td>"
        f"<td>{stats.flags[s]}</td><td>{stats.escalations[s]}</td></tr>"
        for s in SEVERITIES
    )
    shares = store.false_flag_shares(now)
    by_rule = store.false_flag_shares_by_rule(now)
    share_parts = []
    for k in SIGNAL_KINDS:
        share_parts.append(
            f"<tr><td>{escape(KIND_WORDS[k])} <span class=muted>({k.replace('_', ' ')})</span>"
            f"</td><td>{_share(*shares[k][7])}</td><td>{_share(*shares[k][30])}</td></tr>"
        )
        for (kind, rule), share in sorted(by_rule.items()):
            if kind == k:
                share_parts.append(
                    f"<tr><td class=sub>rule: {escape(RULE_WORDS.get(rule, 'other rule'))}</td>"
                    f"<td>{_share(*share[7])}</td><td>{_share(*share[30])}</td></tr>"
                )
    share_rows = "".join(share_parts)
    workload_rows = (
        "".join(
            f"<tr><td><b>{escape(a['agent'])}</b></td>"
            + "".join(
                f"<td class=meta data-label={s}>{a['by_severity'].get(s, 0)}</td>"
                for s in reversed(SEVERITIES)
            )
            + f"<td class=meta data-label=incidents>{a['by_severity'].get('incident', 0)}</td>"
            f"<td class=meta data-label='longest held'>{_waiting(a['longest_s'])}</td></tr>"
            for a in store.workload(now)
        )
        or "<tr><td colspan=7 class=muted>nobody holds a case</td></tr>"
    )
    top = activity.top_controls(now, 10)
    top_rows = (
        "".join(
            f"<tr><td>{escape(page)}</td><td>{escape(control)}</td><td>{n}</td></tr>"
            for (page, control), n in top
        )
        or "<tr><td colspan=3 class=muted>no rage clicks on a control in the last hour</td></tr>"
    )
    untargeted = activity.untargeted(now)
    if untargeted:
        top_rows += (
            f"<tr><td colspan=3 class=muted>and {untargeted} untargeted "
            f"burst{'s' if untargeted != 1 else ''} (fast clicks on one spot, no control sent: "
            "counted, never flagged alone)</td></tr>"
        )
    incident_rows = []
    for i in store.list_incidents(state="open", limit=20):
        due = store.incident_update_due(i, interval)
        due_text = "resolved" if due is None else _time(due, now)
        late = due is not None and due < now
        incident_rows.append(
            f"<tr{' class=overdue' if late else ''}><td data-label=kind>"
            f"{escape(KIND_WORDS[i['kind']])}</td>"
            f'<td title="cause key {escape(i["cause"])}"><a href="/queue/incidents/'
            f'{escape(i["incident_id"])}">{escape(incident_summary(i))}</a></td>'
            f"<td data-label=opened>{_time(wording.parse_wire_ts(i['opened_ts']), now)}</td>"
            f"<td data-label='last flag'>"
            f"{_time(wording.parse_wire_ts(i['last_seen_ts']), now)}</td>"
            f"<td data-label='peak clients / min'>{i['peak_rate']:.1f}</td>"
            f"<td data-label='usual clients / min'>{i['baseline_rate']:.2f}</td>"
            f"<td data-label='next client update'>{due_text}</td></tr>"
        )
    incidents_html = "".join(incident_rows) or (
        "<tr><td colspan=7 class=muted>no open incident</td></tr>"
    )
    body = (
        (
            ""
            if feed.counts_flags
            else "<p class=muted>Kafka runner: this is the queue sink. Events, signals, tracked "
            "users, late and duplicate counts are the workers' (their /metrics and the Grafana "
            "dashboard); the queue, incidents and alerts below are complete.</p>"
        )
        + f"<div class=cards>{cards_html}</div>"
        "<h2>Open incidents (many clients, one cause)</h2><table class=rows><thead><tr>"
        "<th>kind</th><th>what happened</th><th>opened</th><th>last flag</th>"
        "<th>peak clients / min</th><th>usual clients / min</th><th>next client update</th>"
        f"</tr></thead><tbody>{incidents_html}</tbody></table>"
        "<h2>Workload: open cases held per agent</h2><table class=rows><thead><tr>"
        "<th>agent</th><th>critical</th><th>high</th><th>medium</th><th>low</th>"
        f"<th>incidents</th><th>longest held</th></tr></thead><tbody>{workload_rows}</tbody>"
        "</table>"
        "<h2>False flags: resolved cases agents marked “not frustration”</h2>"
        "<table class=wide><tr><th>rule</th><th>last 7 days</th><th>last 30 days</th></tr>"
        f"{share_rows}</table>"
        "<h2>Signals</h2><table class=wide><tr><th>kind</th><th>per minute (last 10 min)</th>"
        f"<th>total</th></tr>{signal_rows}</table>"
        "<h2>Flags by severity</h2><table class=wide><tr><th>severity</th><th>open now</th>"
        f"<th>opened (total)</th><th>escalated to (total)</th></tr>{severity_rows}</table>"
        "<h2>Where people rage-click (last hour)</h2><table class=wide><tr><th>page</th>"
        f"<th>control</th><th>rage-click signals</th></tr>{top_rows}</table>"
        + webhooks.ops_html(feed.outbox)
    )
    live = "<span class=muted id=reload data-refresh=5>updates every 5 s</span>"
    return _layout("Operations", body, context, live)


__all__ = [
    "LISTED_CLIENTS",
    "Filters",
    "PageContext",
    "QueueError",
    "flag_page",
    "inbox_list",
    "incident_page",
    "not_found",
    "ops_page",
    "queue_page",
]

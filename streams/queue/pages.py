"""The two server-rendered pages: `/queue` for support agents, `/ops` for platform ops.

Small HTML, no front-end build, no script beyond a refresh; every value is escaped. Incidents (many
clients, one cause) head the queue as one item each, with the suggested bulk message and the
clients listed under them; their grouped flags are not listed one by one."""

from __future__ import annotations

import time
from collections import Counter
from html import escape
from typing import Any

from detectors.engine import EngineStats
from signals.flags import SEVERITIES, SIGNAL_KINDS
from streams.queue import webhooks
from streams.queue.feed import QueueFeed
from streams.queue.store import OUTCOMES, QueueStore

_STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#243b53;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline}
header a{color:#d9e2ec} main{padding:16px 20px;max-width:1280px}
h1{font-size:19px;margin:0} h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{padding:7px 9px;border-bottom:1px solid #e1e5ea;text-align:left;vertical-align:top}
th{font-size:13px;color:#52606d;background:#eef1f4}
.sev{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;font-size:13px}
.critical{background:#8a041a;color:#fff}.high{background:#d64545;color:#fff}
.medium{background:#f0b429}.low{background:#bcccdc}
.muted{color:#7b8794;font-size:13px} form{display:inline-flex;gap:4px;margin:2px 0}
input,select,button{font:inherit;font-size:13px;padding:2px 6px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:12px}
.card{background:#fff;padding:12px 14px;border:1px solid #e1e5ea;border-radius:6px}
.card b{display:block;font-size:24px} .error{background:#ffe3e3;padding:8px;margin-bottom:10px}
.incident{background:#fffbea} details ul{margin:4px 0;padding-left:18px;columns:3}
blockquote{margin:6px 0;padding:6px 10px;border-left:3px solid #f0b429;background:#fff}
"""


def _layout(title: str, body: str, refresh_s: int) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{refresh_s}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)} · frustration-signals</title><style>{_STYLE}</style></head>"
        f"<body><header><h1>{escape(title)}</h1><a href=/queue>Support queue</a>"
        f"<a href=/ops>Operations</a><span class=muted>refreshes every {refresh_s} s</span>"
        f"</header><main>{body}</main></body></html>"
    )


def _alert_source(alert: dict[str, Any]) -> str:
    """The attacking IP, or for an attack spread over many IPs (no single one) how many."""
    return str(alert["ip"]) if alert["ip"] else f"{alert.get('distinct_ips') or 0} sources"


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _evidence(flag: dict[str, Any]) -> str:
    parts = []
    for kind in SIGNAL_KINDS:
        signals = [s for s in flag.get("signals", []) if s["kind"] == kind]
        if signals:
            parts.append(f"{kind.replace('_', ' ')} ×{len(signals)}")
    return ", ".join(parts)


def _actions(path: str, item: dict[str, Any]) -> str:
    """Claim (open) or resolve (claimed) forms for a flag or an incident at `path`."""
    if item["status"] == "open":
        return (
            f'<form method=post action="{path}/claim">'
            '<input name=agent placeholder="your name" required size=10>'
            "<button>Claim</button></form>"
        )
    options = "".join(f"<option>{o}</option>" for o in OUTCOMES)
    return (
        f"<span class=muted>claimed by {escape(item['claimed_by'] or '?')}</span><br>"
        f'<form method=post action="{path}/resolve">'
        f"<select name=outcome>{options}</select>"
        '<input name=note placeholder="short note" maxlength=500 size=14>'
        "<button>Resolve</button></form>"
    )


#: Clients listed inline under an incident on /queue; the rest are one link away.
LISTED_CLIENTS = 60


def _incidents_html(store: QueueStore, now: float) -> str:
    rows = []
    for item in store.list_incidents(limit=50):
        if item["status"] == "resolved":
            continue
        iid = escape(item["incident_id"])
        shown = store.get_incident(item["incident_id"])
        clients = shown["clients"]
        grouped = item["clients_grouped"]
        individually = len(clients) - grouped
        listed = "".join(
            f'<li><a href="/v1/flags/{escape(c["flag_id"])}"><code>{escape(c["user_id"])}</code>'
            f"</a> <span class=muted>{escape(c['severity'])}, {escape(c['status'])}"
            f"{'' if c['grouped'] else ', individual'}</span></li>"
            for c in clients[:LISTED_CLIENTS]
        )
        more = (
            f'<li><a href="/v1/flags?incident={iid}&amp;limit=1000">all {len(clients)}</a></li>'
            if len(clients) > LISTED_CLIENTS
            else ""
        )
        state = "still happening" if item["state"] == "open" else "over"
        extra = f" (+{individually} handled individually)" if individually else ""
        rows.append(
            f'<tr class=incident data-incident-id="{iid}"><td><b>incident</b><br>'
            f"{escape(item['kind'].replace('_', ' '))}</td>"
            f"<td><b class=count>{grouped}</b> clients{extra}</td>"
            f"<td>{escape(item['evidence'])}<br><span class=muted>{state} · since "
            f"{escape(item['first_seen_ts'])} · <code>{escape(item['cause'])}</code> · "
            f'<a href="/v1/incidents/{iid}">details</a></span>'
            f"<blockquote>{escape(item['message'])}</blockquote>"
            f"<details><summary>Affected clients ({len(clients)})</summary><ul>{listed}{more}"
            f"</ul></details></td><td>{_age(now - item['created_at'])}</td>"
            f"<td>{escape(item['status'])}</td>"
            f"<td>{_actions(f'/v1/incidents/{iid}', item)}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>Incidents: one message for many clients</h2><table><tr><th>Incident</th>"
        "<th>Clients</th><th>What happened · suggested message</th><th>Waiting</th>"
        "<th>Status</th><th></th></tr>" + "".join(rows) + "</table><h2>Individual outreach</h2>"
    )


def queue_page(store: QueueStore, error: str | None = None) -> str:
    now = time.time()
    rows = []
    for f in store.list_flags(limit=300):
        if f["status"] == "resolved":
            continue
        fid = escape(f["flag_id"])
        action = _actions(f"/v1/flags/{fid}", f)
        rows.append(
            f'<tr><td><span class="sev {escape(f["severity"])}">{escape(f["severity"])}</span>'
            f"</td><td>{_age(now - f['created_at'])}</td>"
            f"<td><code>{escape(f['user_id'])}</code></td>"
            f"<td>{escape(f['reason'])}<br><span class=muted>{escape(_evidence(f))} · "
            f'score {f["score"]} · update {f["update"]} · <a href="/v1/flags/{fid}">evidence</a>'
            f"</span></td><td>{escape(f['status'])}</td><td>{action}</td></tr>"
        )
    table = (
        "<table><tr><th>Severity</th><th>Waiting</th><th>Client</th><th>What happened</th>"
        "<th>Status</th><th></th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No one is waiting for outreach right now.</p>"
    )
    alerts = store.list_alerts(limit=20)
    alert_rows = "".join(
        f"<tr><td>{escape(a['ts'])}</td><td>{escape(a['kind'].replace('_', ' '))}</td>"
        f"<td><code>{escape(_alert_source(a))}</code></td>"
        f"<td>{a['distinct_accounts']} accounts, {a['failures']} failures</td></tr>"
        for a in alerts
    )
    alert_html = (
        "<h2>Security alerts (attacks on logins: not for outreach)</h2><table><tr><th>When</th>"
        f"<th>Kind</th><th>Source IP</th><th>Scale</th></tr>{alert_rows}</table>"
        if alerts
        else ""
    )
    counts = store.counts(now)
    summary = (
        f"<p class=muted>{counts.by_status['open']} open, {counts.by_status['claimed']} claimed; "
        f"oldest open waiting {_age(counts.oldest_open_age_s)}. Incidents first, then highest "
        "severity, then longest waiting.</p>"
    )
    banner = f"<div class=error>{escape(error)}</div>" if error else ""
    incidents = _incidents_html(store, now)
    body = banner + summary + incidents + table + alert_html
    return _layout("Support queue", body, refresh_s=10)


def ops_page(feed: QueueFeed) -> str:
    now = time.time()
    activity = feed.activity
    last_minute = sum(n for t, n in activity.events if t >= now - 60)
    signals_10m = Counter(kind for t, kind in activity.signals if t >= now - 600)
    counts = feed.store.counts(now)
    # The queue sink has no engine (the workers have theirs): its figures show as zero.
    stats = feed.engine.stats if feed.engine is not None else EngineStats()
    cards = [
        ("events / s (last minute)", f"{last_minute / 60:.1f}"),
        ("tracked users", f"{len(feed.engine.users) if feed.engine is not None else 0}"),
        ("open queue items (flags, incidents)", f"{counts.by_status['open']}"),
        ("claimed queue items", f"{counts.by_status['claimed']}"),
        ("oldest open queue item", _age(counts.oldest_open_age_s)),
        ("late events (total)", f"{stats.late}"),
        ("duplicate events (total)", f"{stats.duplicates}"),
        ("security alerts (total)", f"{stats.alerts}"),
        ("open incidents", f"{sum(counts.open_incidents.values())}"),
    ]
    cards_html = "".join(f"<div class=card><b>{v}</b>{escape(k)}</div>" for k, v in cards)
    signal_rows = "".join(
        f"<tr><td>{k.replace('_', ' ')}</td><td>{signals_10m[k] / 10:.1f}</td>"
        f"<td>{stats.signals[k]}</td></tr>"
        for k in SIGNAL_KINDS
    )
    severity_rows = "".join(
        f'<tr><td><span class="sev {s}">{s}</span></td><td>{counts.open_by_severity[s]}</td>'
        f"<td>{stats.flags[s]}</td><td>{stats.escalations[s]}</td></tr>"
        for s in SEVERITIES
    )
    top = activity.rage_controls.most_common(10)
    top_rows = (
        "".join(
            f"<tr><td>{escape(page)}</td><td>{escape(control)}</td><td>{n}</td></tr>"
            for (page, control), n in top
        )
        or "<tr><td colspan=3 class=muted>no rage clicks yet</td></tr>"
    )
    incident_rows = (
        "".join(
            f"<tr><td>{escape(i['kind'].replace('_', ' '))}</td><td><code>{escape(i['cause'])}"
            f"</code></td><td>{escape(i['opened_ts'])}</td><td>{escape(i['last_seen_ts'])}</td>"
            f"<td>{i['affected_users'] + i['individual_users']}</td><td>{i['peak_rate']:.1f}</td>"
            f"<td>{i['baseline_rate']:.2f}</td></tr>"
            for i in feed.store.list_incidents(state="open", limit=20)
        )
        or "<tr><td colspan=7 class=muted>no open incident</td></tr>"
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
        "<h2>Open incidents (many clients, one cause)</h2><table><tr><th>kind</th><th>cause</th>"
        "<th>opened</th><th>last flag</th><th>clients</th><th>peak clients / min</th>"
        f"<th>usual clients / min</th></tr>{incident_rows}</table>"
        "<h2>Signals</h2><table><tr><th>kind</th><th>per minute (last 10 min)</th>"
        f"<th>total</th></tr>{signal_rows}</table>"
        "<h2>Flags by severity</h2><table><tr><th>severity</th><th>open now</th>"
        f"<th>opened (total)</th><th>escalated to (total)</th></tr>{severity_rows}</table>"
        "<h2>Where people rage-click</h2><table><tr><th>page</th><th>control</th>"
        f"<th>rage-click signals</th></tr>{top_rows}</table>" + webhooks.ops_html(feed.outbox)
    )
    return _layout("Operations", body, refresh_s=5)

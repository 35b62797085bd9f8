"""The support queue: flags, incidents and security alerts in SQLite, for agents to claim and
resolve.

Written idempotently by `flag_id`: the same emission stored twice is one row, an escalation
updates the row and adds a line to its history, and an emission older than what is stored is
ignored (a replayed Kafka message cannot move a flag back). An escalation of a resolved flag
re-opens it: that is new frustration. WAL mode, so the pages read while the runner writes.

Incidents (many clients, one cause) are queue items of their own, written idempotently by
`incident_id` and `update`. A flag emitted with an `incident_id` is *grouped*: it leaves the
individual queue (the incident item stands for it) and its client is listed under the incident
(`incident_flags`), where the client stays for follow-up, whatever happens later. Rules:

- the same emission again with an `incident_id` (the tracker's re-emission when an incident
  opens) groups a flag that is still open; a flag an agent has already claimed or resolved stays
  where it is (the agent's claim wins) and is only listed under the incident;
- a newer emission without `incident_id` (stronger evidence of its own) takes the flag back to
  the individual queue;
- resolving an incident resolves its grouped flags that are still open, with the same outcome;
- a flag newly grouped under a resolved incident re-opens it (that client has not had the
  message yet).
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import orjson

from signals.flags import SEVERITIES, SIGNAL_KINDS, Flag, SecurityAlert
from signals.incidents import Incident

Status = Literal["open", "claimed", "resolved"]
STATUSES: tuple[Status, ...] = ("open", "claimed", "resolved")
Outcome = Literal[
    "contacted",
    "no_contact_needed",
    "false_positive",
    "referred",
    "client_was_fine",
    "could_not_reach",
    "duplicate",
]
#: The first four are the original API names; the rest say more about what the agent found.
#: `false_positive` ("not frustration") is what the false-flag share counts.
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
MAX_NOTE_CHARS = 500
_RANK = {s: i for i, s in enumerate(SEVERITIES)}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS flags (
    flag_id        TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    severity       TEXT NOT NULL,
    severity_rank  INTEGER NOT NULL,
    score          REAL NOT NULL,
    reason         TEXT NOT NULL,
    kinds          TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    update_no      INTEGER NOT NULL,
    opened_ts      INTEGER NOT NULL,
    event_ts       INTEGER NOT NULL,
    incident_id    TEXT,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    claimed_by     TEXT,
    claimed_at     REAL,
    resolved_at    REAL,
    outcome        TEXT,
    note           TEXT,
    flag_json      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_by_queue ON flags (status, severity_rank DESC, created_at);
CREATE TABLE IF NOT EXISTS flag_history (
    flag_id     TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          REAL NOT NULL,
    what        TEXT NOT NULL,
    severity    TEXT,
    detail      TEXT,
    PRIMARY KEY (flag_id, seq)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          REAL NOT NULL,
    reason      TEXT NOT NULL,
    record      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_by_incident ON flags (incident_id);
CREATE TABLE IF NOT EXISTS incidents (
    incident_id    TEXT PRIMARY KEY,
    cause          TEXT NOT NULL,
    kind           TEXT NOT NULL,
    state          TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    update_no      INTEGER NOT NULL,
    opened_ts      INTEGER NOT NULL,
    event_ts       INTEGER NOT NULL,
    created_at     REAL NOT NULL,
    updated_at     REAL NOT NULL,
    claimed_by     TEXT,
    claimed_at     REAL,
    resolved_at    REAL,
    outcome        TEXT,
    note           TEXT,
    incident_json  BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS incident_flags (
    incident_id  TEXT NOT NULL,
    flag_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    listed_at    REAL NOT NULL,
    PRIMARY KEY (incident_id, flag_id)
);
CREATE TABLE IF NOT EXISTS incident_history (
    incident_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    at          REAL NOT NULL,
    what        TEXT NOT NULL,
    detail      TEXT,
    PRIMARY KEY (incident_id, seq)
);
CREATE TABLE IF NOT EXISTS agents (
    name        TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS flags_by_user ON flags (user_id);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id           TEXT PRIMARY KEY,
    kind               TEXT NOT NULL,
    ip                 TEXT NOT NULL,
    distinct_accounts  INTEGER NOT NULL,
    event_ts           INTEGER NOT NULL,
    created_at         REAL NOT NULL,
    alert_json         BLOB NOT NULL
);
"""


#: Told about every queue change a webhook can announce, inside that change's transaction (so the
#: webhook outbox row commits or rolls back with it): event type (flag.opened, ...), ordering key
#: (the client's user_id; incident:<id>, alert:<id>) and the public JSON. streams.queue.webhooks.
ChangeHook = Callable[[str, str, dict[str, Any]], None]


class QueueError(Exception):
    """A queue operation that cannot be done (unknown flag, wrong state, bad outcome)."""


class HeldError(QueueError):
    """A claim of an item another agent already holds."""

    def __init__(self, message: str, holder: str) -> None:
        super().__init__(message)
        self.holder = holder


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Queue items (individual flags and incidents) by status, the oldest open item's age, open
    individual flags by severity, and incidents the detector still sees open, by kind."""

    by_status: dict[str, int]
    oldest_open_age_s: float
    open_by_severity: dict[str, int]
    open_incidents: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FlagWrite:
    """What storing one flag emission changed."""

    new: bool = False  # a flag not seen before
    escalated: bool = False  # a newer emission of a known flag (escalated or re-opened)
    grouped_into: str | None = None  # the incident the flag now stands under in the queue
    listed_in: str | None = None  # the incident the client was newly listed under


@dataclass(frozen=True, slots=True)
class IncidentWrite:
    """What storing one incident emission changed."""

    new: bool = False
    closed: bool = False  # the detector closed it with this emission


class QueueStore:
    """The support-queue database. One instance per process; not shared across threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(_SCHEMA)
        # Columns added after the first release: older databases get them here.
        for table, column in (
            ("flag_history", "agent"),
            ("incident_history", "agent"),
            ("flags", "resolved_by"),
            ("incidents", "resolved_by"),
        ):
            names = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
            if column not in names:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
        self.on_change: ChangeHook | None = None

    def _announce(self, event_type: str, kind: str, item_id: str) -> None:
        """Tell `on_change` (the webhook outbox) about a change, with the item's public JSON."""
        if self.on_change is None:
            return
        if kind == "flag":
            row = self.db.execute("SELECT * FROM flags WHERE flag_id = ?", (item_id,)).fetchone()
            payload, key = _flag_row(row), row["user_id"]
        elif kind == "incident":
            row = self.db.execute(
                "SELECT * FROM incidents WHERE incident_id = ?", (item_id,)
            ).fetchone()
            payload, key = self._incident_row(row), f"incident:{item_id}"
        else:
            row = self.db.execute(
                "SELECT alert_json, created_at FROM alerts WHERE alert_id = ?", (item_id,)
            ).fetchone()
            payload = orjson.loads(row["alert_json"]) | {"received_at": row["created_at"]}
            key = f"alert:{item_id}"
        self.on_change(event_type, key, payload)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _history(
        self,
        flag_id: str,
        what: str,
        severity: str | None,
        detail: str | None,
        agent: str | None = None,
    ) -> None:
        seq = self.db.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM flag_history WHERE flag_id = ?", (flag_id,)
        ).fetchone()[0]
        self.db.execute(
            "INSERT INTO flag_history (flag_id, seq, at, what, severity, detail, agent) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (flag_id, seq, time.time(), what, severity, detail, agent),
        )

    # -- writes from the runners ------------------------------------------------------------------
    def upsert_flag(self, flag: Flag | dict[str, Any]) -> bool:
        """Store one flag emission; True when it changed the queue (new, newer or regrouped)."""
        return self.write_flag(flag) is not None

    def write_flag(self, flag: Flag | dict[str, Any]) -> FlagWrite | None:
        """Store one flag emission; what it changed, or None when it changed nothing."""
        if isinstance(flag, dict):
            flag = Flag.model_validate(flag)
        blob = flag.model_dump_json().encode()
        kinds = ",".join(sorted({s.kind for s in flag.signals}))
        now = time.time()
        incident = flag.incident_id
        with self._tx() as db:
            row = db.execute(
                "SELECT update_no, status, incident_id FROM flags WHERE flag_id = ?",
                (flag.flag_id,),
            ).fetchone()
            listed = self._list_under(flag, now) if incident is not None else False
            if row is None:
                db.execute(
                    "INSERT INTO flags (flag_id, user_id, severity, severity_rank, score, reason, "
                    "kinds, status, update_no, opened_ts, event_ts, incident_id, created_at, "
                    "updated_at, flag_json) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?, ?)",
                    (
                        flag.flag_id,
                        flag.user_id,
                        flag.severity,
                        _RANK[flag.severity],
                        flag.score,
                        flag.reason,
                        kinds,
                        flag.update,
                        flag.opened_ts,
                        flag.ts,
                        incident,
                        now,
                        now,
                        blob,
                    ),
                )
                self._history(flag.flag_id, "flagged", flag.severity, flag.reason)
                if incident is not None:
                    self._grouped(flag.flag_id, incident)
                self._announce("flag.opened", "flag", flag.flag_id)
                return FlagWrite(
                    new=True, grouped_into=incident, listed_in=incident if listed else None
                )
            stored = row["incident_id"]
            if flag.update < row["update_no"] or (
                flag.update == row["update_no"] and (incident is None or incident == stored)
            ):
                # Already stored (a replayed message) or older; a listing is all it may add.
                return FlagWrite(listed_in=incident) if listed else None
            if flag.update == row["update_no"] and incident is not None:
                # The same emission re-sent with an incident_id: group it, unless an agent
                # already has it (claimed or resolved): then it is only listed.
                if row["status"] != "open" or stored is not None:
                    return FlagWrite(listed_in=incident) if listed else None
                db.execute(
                    "UPDATE flags SET incident_id = ?, flag_json = ?, updated_at = ? "
                    "WHERE flag_id = ?",
                    (incident, blob, now, flag.flag_id),
                )
                self._grouped(flag.flag_id, incident)
                return FlagWrite(grouped_into=incident, listed_in=incident if listed else None)
            status = "open" if row["status"] == "resolved" else row["status"]
            if incident is not None and row["status"] == "claimed":
                incident = stored  # an agent holds it: it stays with them
            db.execute(
                "UPDATE flags SET severity = ?, severity_rank = ?, score = ?, reason = ?, "
                "kinds = ?, update_no = ?, event_ts = ?, incident_id = ?, updated_at = ?, "
                "status = ?, flag_json = ? WHERE flag_id = ?",
                (
                    flag.severity,
                    _RANK[flag.severity],
                    flag.score,
                    flag.reason,
                    kinds,
                    flag.update,
                    flag.ts,
                    incident,
                    now,
                    status,
                    blob,
                    flag.flag_id,
                ),
            )
            what = "reopened" if row["status"] == "resolved" else "escalated"
            self._history(flag.flag_id, what, flag.severity, flag.reason)
            grouped = incident if incident is not None and incident != stored else None
            if grouped is not None:
                self._grouped(flag.flag_id, grouped)
            elif incident is None and stored is not None:
                self._history(flag.flag_id, "ungrouped", None, "stronger evidence of its own")
            self._announce("flag.escalated", "flag", flag.flag_id)
            return FlagWrite(
                escalated=True, grouped_into=grouped, listed_in=flag.incident_id if listed else None
            )

    def _grouped(self, flag_id: str, incident_id: str) -> None:
        """A flag now stands under `incident_id`; a resolved incident re-opens: this client has
        not had the message yet."""
        self._history(flag_id, "grouped", None, incident_id)
        cur = self.db.execute(
            "UPDATE incidents SET status = 'open', updated_at = ? "
            "WHERE incident_id = ? AND status = 'resolved'",
            (time.time(), incident_id),
        )
        if cur.rowcount:
            self._incident_history(incident_id, "reopened", "new clients joined")

    def _list_under(self, flag: Flag, now: float) -> bool:
        """List the flag's client under its incident (once); True when newly listed."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO incident_flags (incident_id, flag_id, user_id, listed_at) "
            "VALUES (?, ?, ?, ?)",
            (flag.incident_id, flag.flag_id, flag.user_id, now),
        )
        return cur.rowcount == 1

    def _incident_history(
        self, incident_id: str, what: str, detail: str | None, agent: str | None = None
    ) -> None:
        seq = self.db.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM incident_history WHERE incident_id = ?",
            (incident_id,),
        ).fetchone()[0]
        self.db.execute(
            "INSERT INTO incident_history (incident_id, seq, at, what, detail, agent) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (incident_id, seq, time.time(), what, detail, agent),
        )

    def upsert_incident(self, incident: Incident | dict[str, Any]) -> bool:
        """Store one incident emission; True when it changed the queue."""
        return self.write_incident(incident) is not None

    def write_incident(self, incident: Incident | dict[str, Any]) -> IncidentWrite | None:
        """Store one incident emission (newer `update` only); what it changed, or None."""
        if isinstance(incident, dict):
            incident = Incident.model_validate(incident)
        blob = incident.model_dump_json().encode()
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT update_no, state FROM incidents WHERE incident_id = ?",
                (incident.incident_id,),
            ).fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO incidents (incident_id, cause, kind, state, status, update_no, "
                    "opened_ts, event_ts, created_at, updated_at, incident_json) "
                    "VALUES (?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?)",
                    (
                        incident.incident_id,
                        incident.cause,
                        incident.kind,
                        incident.status,
                        incident.update,
                        incident.opened_ts,
                        incident.ts,
                        now,
                        now,
                        blob,
                    ),
                )
                self._incident_history(incident.incident_id, "opened", incident.evidence)
                self._announce("incident.opened", "incident", incident.incident_id)
                return IncidentWrite(new=True, closed=incident.status == "closed")
            if incident.update <= row["update_no"]:
                return None
            db.execute(
                "UPDATE incidents SET state = ?, update_no = ?, event_ts = ?, "
                "updated_at = ?, incident_json = ? WHERE incident_id = ?",
                (
                    incident.status,
                    incident.update,
                    incident.ts,
                    now,
                    blob,
                    incident.incident_id,
                ),
            )
            closed = incident.status == "closed" and row["state"] != "closed"
            if closed:
                self._incident_history(incident.incident_id, "closed", incident.evidence)
            what = "incident.closed" if closed else "incident.updated"
            self._announce(what, "incident", incident.incident_id)
            return IncidentWrite(closed=closed)

    def add_alert(self, alert: SecurityAlert | dict[str, Any]) -> bool:
        """Store one security alert; True when it was new."""
        if isinstance(alert, dict):
            alert = SecurityAlert.model_validate(alert)
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO alerts (alert_id, kind, ip, distinct_accounts, event_ts, "
                "created_at, alert_json) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    alert.alert_id,
                    alert.kind,
                    alert.ip,
                    alert.distinct_accounts,
                    alert.ts,
                    time.time(),
                    alert.model_dump_json().encode(),
                ),
            )
            if cur.rowcount == 1:
                self._announce("security_alert.raised", "alert", alert.alert_id)
        return cur.rowcount == 1

    def add_dead_letters(self, records: list[dict[str, Any]], keep: int = 10_000) -> None:
        """Keep rejected input (already stripped of free text) for inspection; the newest `keep`."""
        if not records:
            return
        now = time.time()
        with self._tx() as db:
            db.executemany(
                "INSERT INTO dead_letters (at, reason, record) VALUES (?, ?, ?)",
                [(now, r["reason"], orjson.dumps(r)) for r in records],
            )
            db.execute(
                "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - ?",
                (keep,),
            )

    def list_dead_letters(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT at, record FROM dead_letters ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [orjson.loads(r["record"]) | {"at": r["at"]} for r in rows]

    # -- the agents' side -------------------------------------------------------------------------
    def list_flags(
        self,
        status: Status | None = None,
        min_severity: str = "low",
        limit: int = 200,
        *,
        grouped: bool = False,
        incident_id: str | None = None,
        statuses: tuple[Status, ...] | None = None,
        kind: str | None = None,
        user_search: str | None = None,
        claimed_by: str | None = None,
    ) -> list[dict[str, Any]]:
        """Flags by severity (highest first), then age (oldest first): the individual outreach
        queue (flags not grouped under an incident); with `grouped`, every flag; with
        `incident_id`, the flags of the clients listed under that incident."""
        if min_severity not in _RANK:
            raise QueueError(f"unknown severity {min_severity!r}; one of {', '.join(SEVERITIES)}")
        if status is not None and status not in STATUSES:
            raise QueueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        sql = "SELECT * FROM flags WHERE severity_rank >= ?"
        args: list[Any] = [_RANK[min_severity]]
        if incident_id is not None:
            sql += " AND flag_id IN (SELECT flag_id FROM incident_flags WHERE incident_id = ?)"
            args.append(incident_id)
        elif not grouped:
            sql += " AND incident_id IS NULL"
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if statuses is not None:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args.extend(statuses)
        if kind is not None:
            sql += " AND (',' || kinds || ',') LIKE ?"
            args.append(f"%,{kind},%")
        if user_search:
            sql += " AND instr(lower(user_id), lower(?)) > 0"
            args.append(user_search)
        if claimed_by is not None:
            sql += " AND claimed_by = ? AND status = 'claimed'"
            args.append(claimed_by)
        if limit < 0:
            raise QueueError("limit must be 0 or more")
        sql += " ORDER BY severity_rank DESC, created_at ASC LIMIT ?"
        args.append(limit)
        return [_flag_row(row) for row in self.db.execute(sql, args)]

    def get_flag(self, flag_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT * FROM flags WHERE flag_id = ?", (flag_id,)).fetchone()
        if row is None:
            raise QueueError(f"no flag {flag_id}")
        result = _flag_row(row)
        result["history"] = [
            dict(h)
            for h in self.db.execute(
                "SELECT seq, at, what, severity, detail, agent FROM flag_history "
                "WHERE flag_id = ? "
                "ORDER BY seq",
                (flag_id,),
            )
        ]
        return result

    def claim(self, flag_id: str, agent: str) -> dict[str, Any]:
        agent = _agent(agent)
        with self._tx() as db:
            _claim_item(db, "flag", flag_id, agent)
            self._history(flag_id, "claimed", None, agent, agent)
        return self.get_flag(flag_id)

    def resolve(
        self, flag_id: str, outcome: str, note: str = "", agent: str | None = None
    ) -> dict[str, Any]:
        _check_resolution(outcome, note)
        with self._tx() as db:
            _resolve_item(db, "flag", flag_id, outcome, note, time.time(), agent)
            self._history(flag_id, "resolved", None, outcome, agent)
            self._announce("flag.resolved", "flag", flag_id)
        return self.get_flag(flag_id)

    def unclaim(self, flag_id: str, agent: str | None = None) -> dict[str, Any]:
        """claimed -> open: the agent gives the case back to the queue."""
        with self._tx() as db:
            holder = _claimed_by(db, "flag", flag_id)
            db.execute(
                "UPDATE flags SET status = 'open', claimed_by = NULL, claimed_at = NULL "
                "WHERE flag_id = ?",
                (flag_id,),
            )
            self._history(flag_id, "unclaimed", None, holder, agent or holder)
        return self.get_flag(flag_id)

    def reassign(self, flag_id: str, to: str, agent: str | None = None) -> dict[str, Any]:
        """A claimed case handed to another agent (who holds it from now on)."""
        to = _agent(to)
        with self._tx() as db:
            holder = _claimed_by(db, "flag", flag_id)
            db.execute(
                "UPDATE flags SET claimed_by = ?, claimed_at = ? WHERE flag_id = ?",
                (to, time.time(), flag_id),
            )
            self._history(flag_id, "reassigned", None, f"{holder} -> {to}", agent or holder)
        return self.get_flag(flag_id)

    def add_note(self, flag_id: str, note: str, agent: str | None = None) -> dict[str, Any]:
        note = note.strip()
        if not note:
            raise QueueError("the note is empty")
        if len(note) > MAX_NOTE_CHARS:
            raise QueueError(f"note is longer than {MAX_NOTE_CHARS} characters")
        with self._tx() as db:
            _item_status(db, "flag", flag_id)
            self._history(flag_id, "note", None, note, agent)
        return self.get_flag(flag_id)

    # -- incidents --------------------------------------------------------------------------------
    def list_incidents(
        self, status: Status | None = None, state: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Incidents: unresolved first, then those the detector still sees open, newest first."""
        if status is not None and status not in STATUSES:
            raise QueueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        if state is not None and state not in ("open", "closed"):
            raise QueueError(f"unknown state {state!r}; one of open, closed")
        sql = "SELECT * FROM incidents WHERE 1 = 1"
        args: list[Any] = []
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if state is not None:
            sql += " AND state = ?"
            args.append(state)
        sql += (
            " ORDER BY status = 'resolved', state = 'closed', opened_ts DESC, incident_id LIMIT ?"
        )
        args.append(limit)
        return [self._incident_row(row) for row in self.db.execute(sql, args)]

    def get_incident(self, incident_id: str) -> dict[str, Any]:
        """One incident with its history and every client listed under it."""
        row = self.db.execute(
            "SELECT * FROM incidents WHERE incident_id = ?", (incident_id,)
        ).fetchone()
        if row is None:
            raise QueueError(f"no incident {incident_id}")
        result = self._incident_row(row)
        result["history"] = [
            dict(h)
            for h in self.db.execute(
                "SELECT seq, at, what, detail, agent FROM incident_history WHERE incident_id = ? "
                "ORDER BY seq",
                (incident_id,),
            )
        ]
        result["clients"] = [
            {
                "user_id": r["user_id"],
                "flag_id": r["flag_id"],
                "severity": r["severity"],
                "status": r["status"],
                "grouped": r["incident_id"] == incident_id,
                "reason": r["reason"],
            }
            for r in self.db.execute(
                "SELECT l.user_id, l.flag_id, f.severity, f.status, f.incident_id, f.reason "
                "FROM incident_flags l JOIN flags f ON f.flag_id = l.flag_id "
                "WHERE l.incident_id = ? ORDER BY f.severity_rank DESC, l.listed_at, l.flag_id",
                (incident_id,),
            )
        ]
        return result

    def claim_incident(self, incident_id: str, agent: str) -> dict[str, Any]:
        agent = _agent(agent)
        with self._tx() as db:
            _claim_item(db, "incident", incident_id, agent)
            self._incident_history(incident_id, "claimed", agent, agent)
        return self.get_incident(incident_id)

    def record_incident_update(
        self, incident_id: str, note: str = "", agent: str | None = None
    ) -> dict[str, Any]:
        """A proactive update was sent to the incident's clients (the next is due one
        `incident_update_interval_s` later)."""
        if len(note) > MAX_NOTE_CHARS:
            raise QueueError(f"note is longer than {MAX_NOTE_CHARS} characters")
        with self._tx() as db:
            if _item_status(db, "incident", incident_id) == "resolved":
                raise QueueError(f"incident {incident_id} is already resolved")
            self._incident_history(incident_id, "update_sent", note.strip() or None, agent)
        return self.get_incident(incident_id)

    def last_incident_update(self, incident_id: str) -> float | None:
        row = self.db.execute(
            "SELECT MAX(at) FROM incident_history WHERE incident_id = ? AND what = 'update_sent'",
            (incident_id,),
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def incident_update_due(self, incident: dict[str, Any], interval_s: float) -> float | None:
        """When the next proactive update of an unresolved incident is due (epoch s)."""
        if incident["status"] == "resolved":
            return None
        last = self.last_incident_update(incident["incident_id"])
        return (incident["created_at"] if last is None else last) + interval_s

    def overdue_incident_updates(self, now: float, interval_s: float) -> dict[str, int]:
        """Unresolved incidents whose proactive update is overdue, by kind."""
        overdue: dict[str, int] = {}
        for row in self.db.execute(
            "SELECT i.kind, COALESCE(MAX(h.at), i.created_at) AS last FROM incidents i "
            "LEFT JOIN incident_history h ON h.incident_id = i.incident_id "
            "AND h.what = 'update_sent' WHERE i.status != 'resolved' GROUP BY i.incident_id"
        ):
            if row["last"] + interval_s < now:
                overdue[row["kind"]] = overdue.get(row["kind"], 0) + 1
        return overdue

    def resolve_incident(
        self, incident_id: str, outcome: str, note: str = "", agent: str | None = None
    ) -> dict[str, Any]:
        """Resolve the incident item and, with the same outcome, its grouped flags still open
        (flags an agent claimed stay with that agent)."""
        _check_resolution(outcome, note)
        now = time.time()
        with self._tx() as db:
            _resolve_item(db, "incident", incident_id, outcome, note, now, agent)
            flag_ids = [
                r["flag_id"]
                for r in db.execute(
                    "SELECT flag_id FROM flags WHERE incident_id = ? AND status = 'open' "
                    "ORDER BY flag_id",
                    (incident_id,),
                )
            ]
            for flag_id in flag_ids:
                _resolve_item(
                    db, "flag", flag_id, outcome, f"resolved with incident {incident_id}", now
                )
                self._history(flag_id, "resolved", None, f"{outcome} (incident {incident_id})")
                self._announce("flag.resolved", "flag", flag_id)
            self._incident_history(
                incident_id, "resolved", f"{outcome}; {len(flag_ids)} flags", agent
            )
            self._announce("incident.updated", "incident", incident_id)
        return self.get_incident(incident_id)

    def _incident_row(self, row: sqlite3.Row) -> dict[str, Any]:
        listed = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(f.incident_id = l.incident_id), 0) "
            "FROM incident_flags l JOIN flags f ON f.flag_id = l.flag_id "
            "WHERE l.incident_id = ?",
            (row["incident_id"],),
        ).fetchone()
        return {
            **orjson.loads(row["incident_json"]),
            "state": row["state"],
            "status": row["status"],
            "clients_listed": listed[0],
            "clients_grouped": listed[1],
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
            "claimed_by": row["claimed_by"],
            "claimed_at": row["claimed_at"],
            "resolved_at": row["resolved_at"],
            "outcome": row["outcome"],
            "note": row["note"],
        }

    def list_alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT alert_json, created_at FROM alerts ORDER BY event_ts DESC LIMIT ?", (limit,)
        )
        return [orjson.loads(r["alert_json"]) | {"received_at": r["created_at"]} for r in rows]

    def counts(self, now: float | None = None) -> QueueCounts:
        """Queue items: individual flags (not grouped under an incident) and incidents."""
        now = time.time() if now is None else now
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for row in self.db.execute(
            "SELECT status, COUNT(*) AS n FROM flags WHERE incident_id IS NULL GROUP BY status "
            "UNION ALL SELECT status, COUNT(*) AS n FROM incidents GROUP BY status"
        ):
            by_status[row["status"]] += row["n"]
        open_by_severity: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        for row in self.db.execute(
            "SELECT severity, COUNT(*) AS n FROM flags WHERE status = 'open' "
            "AND incident_id IS NULL GROUP BY severity"
        ):
            open_by_severity[row["severity"]] = row["n"]
        oldest = self.db.execute(
            "SELECT MIN(t) FROM (SELECT MIN(created_at) AS t FROM flags WHERE status = 'open' "
            "AND incident_id IS NULL UNION ALL "
            "SELECT MIN(created_at) FROM incidents WHERE status = 'open')"
        ).fetchone()[0]
        age = max(0.0, now - oldest) if oldest is not None else 0.0
        open_incidents: dict[str, int] = {}
        for row in self.db.execute(
            "SELECT kind, COUNT(*) AS n FROM incidents WHERE state = 'open' GROUP BY kind"
        ):
            open_incidents[row["kind"]] = row["n"]
        return QueueCounts(by_status, age, open_by_severity, open_incidents)

    # -- the client's history, outcomes, workload --------------------------------------------------
    def client_history(self, user_id: str, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
        """Everything the queue knows about one client: their flags (newest first, with how they
        were resolved) and the incidents they were listed under."""
        flags = [
            _flag_row(r)
            for r in self.db.execute(
                "SELECT * FROM flags WHERE user_id = ? ORDER BY created_at DESC LIMIT ?",
                (user_id, limit),
            )
        ]
        incidents = [
            self._incident_row(r)
            for r in self.db.execute(
                "SELECT i.* FROM incidents i WHERE i.incident_id IN "
                "(SELECT incident_id FROM incident_flags WHERE user_id = ?) "
                "ORDER BY i.created_at DESC LIMIT ?",
                (user_id, limit),
            )
        ]
        return {"flags": flags, "incidents": incidents}

    def false_flag_shares(
        self, now: float, days: tuple[int, ...] = (7, 30)
    ) -> dict[str, dict[int, tuple[int, int]]]:
        """Per signal kind and window: (flags agents marked "not frustration", flags resolved)
        among flags resolved in the last `days` days. A flag of two kinds counts for both."""
        out: dict[str, dict[int, tuple[int, int]]] = {}
        for kind in SIGNAL_KINDS:
            out[kind] = {}
            for d in days:
                row = self.db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(outcome = 'false_positive'), 0) FROM flags "
                    "WHERE status = 'resolved' AND resolved_at >= ? "
                    "AND (',' || kinds || ',') LIKE ?",
                    (now - d * 86_400, f"%,{kind},%"),
                ).fetchone()
                out[kind][d] = (int(row[1]), int(row[0]))
        return out

    #: Most resolved flags read for the per-rule shares (the newest first), so /ops stays cheap.
    RULE_SHARE_ROWS = 20_000

    def false_flag_shares_by_rule(
        self, now: float, days: tuple[int, ...] = (7, 30)
    ) -> dict[tuple[str, str], dict[int, tuple[int, int]]]:
        """As `false_flag_shares`, per (kind, rule) for the kinds whose detector has several
        rules (rage clicks: one burst, repeated bursts); a flag counts for every rule it holds."""
        out: dict[tuple[str, str], dict[int, tuple[int, int]]] = {}
        rows = self.db.execute(
            "SELECT resolved_at, outcome, flag_json FROM flags WHERE status = 'resolved' "
            "AND resolved_at >= ? AND kinds LIKE '%rage_click%' ORDER BY resolved_at DESC "
            "LIMIT ?",
            (now - max(days) * 86_400, self.RULE_SHARE_ROWS),
        )
        for row in rows:
            flag = orjson.loads(row["flag_json"])
            rules = {
                (s["kind"], str(s["evidence"].get("rule")))
                for s in flag.get("signals", [])
                if s.get("kind") == "rage_click" and s.get("evidence", {}).get("rule")
            }
            for key in rules:
                entry = out.setdefault(key, {d: (0, 0) for d in days})
                for d in days:
                    if row["resolved_at"] >= now - d * 86_400:
                        n_false, n = entry[d]
                        entry[d] = (n_false + (row["outcome"] == "false_positive"), n + 1)
        return out

    def workload(self, now: float, limit: int = 50) -> list[dict[str, Any]]:
        """Per agent: claimed cases (individual flags and incidents) by severity, and how long
        the longest has been held; heaviest first."""
        agents: dict[str, dict[str, Any]] = {}
        for row in self.db.execute(
            "SELECT claimed_by, severity, COUNT(*) AS n, MIN(claimed_at) AS since FROM flags "
            "WHERE status = 'claimed' GROUP BY claimed_by, severity "
            "UNION ALL SELECT claimed_by, 'incident', COUNT(*), MIN(claimed_at) FROM incidents "
            "WHERE status = 'claimed' GROUP BY claimed_by"
        ):
            name = row[0] or "?"
            entry = agents.setdefault(
                name, {"agent": name, "by_severity": {}, "total": 0, "longest_s": 0.0}
            )
            entry["by_severity"][row[1]] = row[2]
            entry["total"] += row[2]
            if row[3] is not None:
                entry["longest_s"] = max(entry["longest_s"], now - row[3])
        ranked = sorted(
            agents.values(),
            key=lambda a: (
                -sum(a["by_severity"].get(s, 0) for s in ("critical", "high")),
                -a["total"],
                a["agent"],
            ),
        )
        return ranked[:limit]

    # -- agents and the page secret ---------------------------------------------------------------
    def add_agent(self, name: str) -> str:
        """A new agent with a fresh token; the token is returned once and stored only hashed."""
        name = _agent(name)
        token = "fsa_" + secrets.token_urlsafe(24)
        try:
            self.db.execute(
                "INSERT INTO agents (name, token_hash, created_at) VALUES (?, ?, ?)",
                (name, token_hash(token), time.time()),
            )
        except sqlite3.IntegrityError:
            raise QueueError(f"there is already an agent {name!r}") from None
        return token

    def remove_agent(self, name: str) -> bool:
        return self.db.execute("DELETE FROM agents WHERE name = ?", (name,)).rowcount == 1

    def list_agents(self) -> list[dict[str, Any]]:
        return [
            {"name": r["name"], "created_at": r["created_at"]}
            for r in self.db.execute("SELECT name, created_at FROM agents ORDER BY name")
        ]

    def has_agents(self) -> bool:
        return self.db.execute("SELECT 1 FROM agents LIMIT 1").fetchone() is not None

    def agent_for_token(self, token: str) -> str | None:
        row = self.db.execute(
            "SELECT name FROM agents WHERE token_hash = ?", (token_hash(token),)
        ).fetchone()
        return None if row is None else str(row["name"])

    def secret(self, key: str) -> bytes:
        """A random secret kept in the database (the pages' CSRF key), made on first use."""
        fresh = secrets.token_hex(32)
        self.db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (key, fresh))
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return bytes.fromhex(row["value"])


def token_hash(token: str) -> str:
    """Agent tokens are 144 random bits: one SHA-256 is enough to keep the stored copy useless."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _flag_row(row: sqlite3.Row) -> dict[str, Any]:
    flag = orjson.loads(row["flag_json"])
    return {
        **flag,
        # The queue's grouping: an agent's claim can keep a flag out of the incident it names.
        "incident_id": row["incident_id"],
        "status": row["status"],
        "kinds": row["kinds"].split(",") if row["kinds"] else [],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "claimed_by": row["claimed_by"],
        "claimed_at": row["claimed_at"],
        "resolved_at": row["resolved_at"],
        "outcome": row["outcome"],
        "note": row["note"],
        "resolved_by": row["resolved_by"],
    }


# -- the queue item life cycle, shared by flags and incidents: open -> claimed -> resolved ---------
#: Item kind -> (table, key column). Fixed names only, never input, go into the SQL below.
_ITEM_TABLES = {"flag": ("flags", "flag_id"), "incident": ("incidents", "incident_id")}


def _agent(agent: str) -> str:
    agent = agent.strip()[:64]
    if not agent:
        raise QueueError("claim needs the agent's name")
    return agent


def _check_resolution(outcome: str, note: str) -> None:
    if outcome not in OUTCOMES:
        raise QueueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
    if len(note) > MAX_NOTE_CHARS:
        raise QueueError(f"note is longer than {MAX_NOTE_CHARS} characters")


def _item_status(db: sqlite3.Connection, kind: str, item_id: str) -> str:
    table, key = _ITEM_TABLES[kind]
    row = db.execute(f"SELECT status FROM {table} WHERE {key} = ?", (item_id,)).fetchone()
    if row is None:
        raise QueueError(f"no {kind} {item_id}")
    status: str = row["status"]
    return status


def _claimed_by(db: sqlite3.Connection, kind: str, item_id: str) -> str:
    """The agent holding a claimed item (a QueueError when it is not claimed)."""
    status = _item_status(db, kind, item_id)
    if status != "claimed":
        raise QueueError(f"{kind} {item_id} is {status}, not claimed")
    table, key = _ITEM_TABLES[kind]
    row = db.execute(f"SELECT claimed_by FROM {table} WHERE {key} = ?", (item_id,)).fetchone()
    holder: str = row["claimed_by"] or "?"
    return holder


def _claim_item(db: sqlite3.Connection, kind: str, item_id: str, agent: str) -> None:
    """open -> claimed (a HeldError when an agent holds it, a QueueError when resolved)."""
    status = _item_status(db, kind, item_id)
    if status == "claimed":
        holder = _claimed_by(db, kind, item_id)
        raise HeldError(f"{kind} {item_id} is claimed by {holder}, not open", holder)
    if status != "open":
        raise QueueError(f"{kind} {item_id} is {status}, not open")
    table, key = _ITEM_TABLES[kind]
    db.execute(
        f"UPDATE {table} SET status = 'claimed', claimed_by = ?, claimed_at = ? WHERE {key} = ?",
        (agent, time.time(), item_id),
    )


def _resolve_item(
    db: sqlite3.Connection,
    kind: str,
    item_id: str,
    outcome: str,
    note: str,
    now: float,
    agent: str | None = None,
) -> None:
    """open or claimed -> resolved (a QueueError when already resolved)."""
    if _item_status(db, kind, item_id) == "resolved":
        raise QueueError(f"{kind} {item_id} is already resolved")
    table, key = _ITEM_TABLES[kind]
    db.execute(
        f"UPDATE {table} SET status = 'resolved', resolved_at = ?, outcome = ?, note = ?, "
        f"resolved_by = COALESCE(?, claimed_by) WHERE {key} = ?",
        (now, outcome, note, agent, item_id),
    )

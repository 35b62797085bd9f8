"""The support queue: flags and security alerts in SQLite, for agents to claim and resolve.

Written idempotently by `flag_id`: the same emission stored twice is one row, an escalation
updates the row and adds a line to its history, and an emission older than what is stored is
ignored (a replayed Kafka message cannot move a flag back). An escalation of a resolved flag
re-opens it: that is new frustration. WAL mode, so the pages read while the runner writes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from signals.flags import SEVERITIES, Flag, SecurityAlert

Status = Literal["open", "claimed", "resolved"]
STATUSES: tuple[Status, ...] = ("open", "claimed", "resolved")
Outcome = Literal["contacted", "no_contact_needed", "false_positive", "referred"]
OUTCOMES: tuple[Outcome, ...] = ("contacted", "no_contact_needed", "false_positive", "referred")
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


class QueueError(Exception):
    """A queue operation that cannot be done (unknown flag, wrong state, bad outcome)."""


@dataclass(frozen=True, slots=True)
class QueueCounts:
    by_status: dict[str, int]
    oldest_open_age_s: float
    open_by_severity: dict[str, int]


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

    def _history(self, flag_id: str, what: str, severity: str | None, detail: str | None) -> None:
        seq = self.db.execute(
            "SELECT COALESCE(MAX(seq), -1) + 1 FROM flag_history WHERE flag_id = ?", (flag_id,)
        ).fetchone()[0]
        self.db.execute(
            "INSERT INTO flag_history (flag_id, seq, at, what, severity, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (flag_id, seq, time.time(), what, severity, detail),
        )

    # -- writes from the runners ------------------------------------------------------------------
    def upsert_flag(self, flag: Flag | dict[str, Any]) -> bool:
        """Store one flag emission; True when it changed the queue (new or newer)."""
        if isinstance(flag, dict):
            flag = Flag.model_validate(flag)
        blob = flag.model_dump_json().encode()
        kinds = ",".join(sorted({s.kind for s in flag.signals}))
        now = time.time()
        with self._tx() as db:
            row = db.execute(
                "SELECT update_no, status FROM flags WHERE flag_id = ?", (flag.flag_id,)
            ).fetchone()
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
                        flag.incident_id,
                        now,
                        now,
                        blob,
                    ),
                )
                self._history(flag.flag_id, "flagged", flag.severity, flag.reason)
                return True
            if flag.update <= row["update_no"]:
                return False  # already stored (a replayed message) or older
            status = "open" if row["status"] == "resolved" else row["status"]
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
                    flag.incident_id,
                    now,
                    status,
                    blob,
                    flag.flag_id,
                ),
            )
            what = "reopened" if row["status"] == "resolved" else "escalated"
            self._history(flag.flag_id, what, flag.severity, flag.reason)
            return True

    def add_alert(self, alert: SecurityAlert | dict[str, Any]) -> bool:
        """Store one security alert; True when it was new."""
        if isinstance(alert, dict):
            alert = SecurityAlert.model_validate(alert)
        cur = self.db.execute(
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
    ) -> list[dict[str, Any]]:
        """Flags by severity (highest first), then age (oldest first)."""
        if min_severity not in _RANK:
            raise QueueError(f"unknown severity {min_severity!r}; one of {', '.join(SEVERITIES)}")
        if status is not None and status not in STATUSES:
            raise QueueError(f"unknown status {status!r}; one of {', '.join(STATUSES)}")
        sql = "SELECT * FROM flags WHERE severity_rank >= ?"
        args: list[Any] = [_RANK[min_severity]]
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
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
                "SELECT seq, at, what, severity, detail FROM flag_history WHERE flag_id = ? "
                "ORDER BY seq",
                (flag_id,),
            )
        ]
        return result

    def claim(self, flag_id: str, agent: str) -> dict[str, Any]:
        agent = agent.strip()[:64]
        if not agent:
            raise QueueError("claim needs the agent's name")
        with self._tx() as db:
            row = db.execute("SELECT status FROM flags WHERE flag_id = ?", (flag_id,)).fetchone()
            if row is None:
                raise QueueError(f"no flag {flag_id}")
            if row["status"] != "open":
                raise QueueError(f"flag {flag_id} is {row['status']}, not open")
            db.execute(
                "UPDATE flags SET status = 'claimed', claimed_by = ?, claimed_at = ? "
                "WHERE flag_id = ?",
                (agent, time.time(), flag_id),
            )
            self._history(flag_id, "claimed", None, agent)
        return self.get_flag(flag_id)

    def resolve(self, flag_id: str, outcome: str, note: str = "") -> dict[str, Any]:
        if outcome not in OUTCOMES:
            raise QueueError(f"unknown outcome {outcome!r}; one of {', '.join(OUTCOMES)}")
        if len(note) > MAX_NOTE_CHARS:
            raise QueueError(f"note is longer than {MAX_NOTE_CHARS} characters")
        with self._tx() as db:
            row = db.execute("SELECT status FROM flags WHERE flag_id = ?", (flag_id,)).fetchone()
            if row is None:
                raise QueueError(f"no flag {flag_id}")
            if row["status"] == "resolved":
                raise QueueError(f"flag {flag_id} is already resolved")
            db.execute(
                "UPDATE flags SET status = 'resolved', resolved_at = ?, outcome = ?, note = ? "
                "WHERE flag_id = ?",
                (time.time(), outcome, note, flag_id),
            )
            self._history(flag_id, "resolved", None, outcome)
        return self.get_flag(flag_id)

    def list_alerts(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT alert_json, created_at FROM alerts ORDER BY event_ts DESC LIMIT ?", (limit,)
        )
        return [orjson.loads(r["alert_json"]) | {"received_at": r["created_at"]} for r in rows]

    def counts(self, now: float | None = None) -> QueueCounts:
        now = time.time() if now is None else now
        by_status: dict[str, int] = dict.fromkeys(STATUSES, 0)
        for row in self.db.execute("SELECT status, COUNT(*) AS n FROM flags GROUP BY status"):
            by_status[row["status"]] = row["n"]
        open_by_severity: dict[str, int] = dict.fromkeys(SEVERITIES, 0)
        for row in self.db.execute(
            "SELECT severity, COUNT(*) AS n FROM flags WHERE status = 'open' GROUP BY severity"
        ):
            open_by_severity[row["severity"]] = row["n"]
        oldest = self.db.execute(
            "SELECT MIN(created_at) FROM flags WHERE status = 'open'"
        ).fetchone()[0]
        age = max(0.0, now - oldest) if oldest is not None else 0.0
        return QueueCounts(by_status, age, open_by_severity)


def _flag_row(row: sqlite3.Row) -> dict[str, Any]:
    flag = orjson.loads(row["flag_json"])
    return {
        **flag,
        "status": row["status"],
        "kinds": row["kinds"].split(",") if row["kinds"] else [],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
        "claimed_by": row["claimed_by"],
        "claimed_at": row["claimed_at"],
        "resolved_at": row["resolved_at"],
        "outcome": row["outcome"],
        "note": row["note"],
    }

"""The ingest journal: what makes a 202 a promise. Every accepted batch is appended here (SQLite in
WAL mode) before the response; on start the service loads its last checkpoint and replays the
journal after it; a checkpoint truncates the journal behind it.

One row per accepted batch: its sequence number, the wall time it arrived, the wall time of the
last idle advance before it (so a replay moves each client's clock exactly as the service did),
and the accepted events as NDJSON (the bytes the client sent, re-serialised once by the parser).

fsync policy (`journal_sync`): ``full`` (the default) makes SQLite fsync the WAL at every commit,
so an acknowledged batch survives a power cut as well as a crash; it costs one fsync per POST
(hundreds of microseconds to milliseconds, by disk). ``normal`` fsyncs only at WAL checkpoints:
an acknowledged batch survives the process being killed (the write is in the OS page cache),
not a power cut of the machine.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

JournalSync = Literal["full", "normal"]


@dataclass(frozen=True, slots=True)
class JournalBatch:
    seq: int
    arrived_ms: int
    advanced_ms: int | None  # the last idle advance (wall ms) before this batch, if any
    events: bytes  # NDJSON


class Journal:
    """Append-only log of accepted batches (SQLite, WAL)."""

    def __init__(self, path: Path, sync: JournalSync = "full") -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "arrived_ms INTEGER "
            "NOT NULL, advanced_ms INTEGER, events BLOB NOT NULL)"
        )

    def append(self, arrived_ms: int, advanced_ms: int | None, events: bytes) -> int:
        """Write one batch durably (per the fsync policy); its sequence number."""
        cursor = self._db.execute(
            "INSERT INTO batches (arrived_ms, advanced_ms, events) VALUES (?, ?, ?)",
            (arrived_ms, advanced_ms, events),
        )
        seq = cursor.lastrowid
        assert seq is not None
        return seq

    def after(self, seq: int) -> Iterator[JournalBatch]:
        """The batches after `seq` (the one a checkpoint covers), in order."""
        rows = self._db.execute(
            "SELECT seq, arrived_ms, advanced_ms, events FROM batches WHERE seq > ? ORDER BY seq",
            (seq,),
        )
        for row in rows:
            yield JournalBatch(row[0], row[1], row[2], bytes(row[3]))

    def truncate(self, upto_seq: int) -> None:
        """Forget the batches a checkpoint covers."""
        self._db.execute("DELETE FROM batches WHERE seq <= ?", (upto_seq,))

    def last_seq(self) -> int:
        row = self._db.execute("SELECT MAX(seq) FROM batches").fetchone()
        return int(row[0] or 0)

    def close(self) -> None:
        self._db.close()

"""State files that a crash leaves either old or new, never torn."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, blob: bytes) -> None:
    """Write `blob` to `path` through a temp file, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as handle:
        handle.write(blob)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)

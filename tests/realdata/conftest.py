"""Where the public real data is: `../shared/real-data` beside the repository, or
`FRUSTRATION_REAL_DATA`. Tests here skip, with the reason, only where that folder is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def real_data_dir() -> Path:
    override = os.environ.get("FRUSTRATION_REAL_DATA")
    return Path(override) if override else REPO / ".." / "shared" / "real-data"


@pytest.fixture(scope="session")
def real_data() -> Path:
    folder = real_data_dir()
    if not folder.is_dir():
        pytest.skip(f"real data folder {folder} is absent (set FRUSTRATION_REAL_DATA)")
    return folder

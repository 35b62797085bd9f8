"""`tune_gc`, which `serve` and `worker` call before they start taking events."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams.runtime import YOUNG_GC_THRESHOLD, tune_gc


@pytest.fixture
def restored_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_start_up_objects_and_collects_young_ones_less_often(
    restored_gc: None,
) -> None:
    assert gc.get_threshold()[0] < YOUNG_GC_THRESHOLD
    tune_gc()
    assert gc.get_threshold()[0] == YOUNG_GC_THRESHOLD
    assert gc.get_freeze_count() > 10_000  # the modules imported so far, at least
    cycle: list[object] = []
    cycle.append(cycle)
    del cycle
    assert gc.collect() >= 1  # an explicit collection still frees garbage in cycles

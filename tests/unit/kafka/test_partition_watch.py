"""streams.kafka.partition_watch: a partition that stops moving while records wait in it is stalled
(issue 15: a worker's detect stage went silent with nothing in its log)."""

from __future__ import annotations

from streams.kafka.partition_watch import PartitionWatch


def test_a_partition_that_keeps_moving_is_never_stalled() -> None:
    watch = PartitionWatch(stall_after_s=30.0)
    for step in range(10):
        report = watch.update(0, position=step * 100, end_offset=step * 100 + 500, now=step * 20.0)
        assert not report.stalled and report.lag == 500


def test_an_idle_partition_with_nothing_to_read_is_not_stalled() -> None:
    watch = PartitionWatch(stall_after_s=30.0)
    watch.update(0, position=42, end_offset=42, now=0.0)
    report = watch.update(0, position=42, end_offset=42, now=600.0)
    assert not report.stalled and report.lag == 0 and not report.changed


def test_unread_records_and_no_progress_stall_once_then_recover_once() -> None:
    watch = PartitionWatch(stall_after_s=30.0)
    assert not watch.update(2, position=0, end_offset=0, now=0.0).stalled
    # Records arrive; the position stays: the stall counts from when records were waiting.
    assert not watch.update(2, position=0, end_offset=208, now=10.0).stalled
    assert not watch.update(2, position=0, end_offset=208, now=39.0).stalled
    first = watch.update(2, position=0, end_offset=208, now=41.0)
    assert first.stalled and first.changed and first.lag == 208
    again = watch.update(2, position=0, end_offset=210, now=46.0)
    assert again.stalled and not again.changed, "one warning per stall"
    moved = watch.update(2, position=150, end_offset=210, now=51.0)
    assert not moved.stalled and moved.changed and moved.lag == 60


def test_partitions_are_watched_apart_and_forgotten_when_they_move_away() -> None:
    watch = PartitionWatch(stall_after_s=5.0)
    watch.update(0, position=0, end_offset=10, now=0.0)
    watch.update(1, position=0, end_offset=10, now=0.0)
    assert watch.update(0, position=0, end_offset=10, now=6.0).stalled
    assert not watch.update(1, position=10, end_offset=10, now=6.0).stalled
    watch.forget(0)
    assert watch.partitions() == [1]
    assert not watch.update(0, position=0, end_offset=10, now=7.0).stalled, "a fresh start"

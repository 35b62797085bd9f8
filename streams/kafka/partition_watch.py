"""Which input partitions stopped moving while records wait in them (Kafka runner).

A worker whose detect stage stops taking in a partition's records produces no flag for that
partition's users and, without this, says nothing (issue 15). :class:`PartitionWatch` keeps, per
partition, the input lag (records on the broker not taken in yet) and since when the partition's
position has not moved while that lag was above 0; past ``stall_after_s`` the partition is
*stalled*. The worker logs a WARNING once per stall and exposes both as gauges
(``frustration_partition_input_lag_messages``, ``frustration_partition_stalled``).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Seconds without progress, with records waiting, before a partition counts as stalled: well
#: above a checkpoint interval, a rebalance (about 10 s) and a table recovery of a few MB.
STALL_AFTER_S = 30.0


@dataclass(slots=True)
class _Progress:
    position: int
    lag: int
    since: float  # when the position last moved, or the lag was last 0
    stalled: bool = False


@dataclass(frozen=True, slots=True)
class PartitionReport:
    partition: int
    lag: int
    stalled: bool
    stalled_for_s: float
    changed: bool  # stalled or recovered at this update (log it once)


class PartitionWatch:
    """Progress of each watched partition, updated once per housekeeping tick.

    >>> watch = PartitionWatch(stall_after_s=30.0)
    >>> watch.update(0, position=10, end_offset=50, now=100.0).stalled
    False
    >>> watch.update(0, position=10, end_offset=60, now=131.0)
    PartitionReport(partition=0, lag=50, stalled=True, stalled_for_s=31.0, changed=True)
    >>> watch.update(0, position=11, end_offset=60, now=132.0).changed  # moved again
    True
    """

    def __init__(self, stall_after_s: float = STALL_AFTER_S) -> None:
        self.stall_after_s = stall_after_s
        self._progress: dict[int, _Progress] = {}

    def update(
        self, partition: int, *, position: int, end_offset: int, now: float
    ) -> PartitionReport:
        """`position`: next offset the partition's consumer stage will take in; `end_offset`: the
        broker's end of the partition (next offset to be written)."""
        lag = max(0, end_offset - position)
        seen = self._progress.get(partition)
        if seen is None:
            seen = self._progress[partition] = _Progress(position, lag, now)
        elif position != seen.position or lag == 0 or seen.lag == 0:  # moved, or nothing waited
            seen.position, seen.since = position, now
        seen.lag = lag
        stalled = lag > 0 and now - seen.since >= self.stall_after_s
        changed = stalled != seen.stalled
        seen.stalled = stalled
        return PartitionReport(partition, lag, stalled, now - seen.since if lag else 0.0, changed)

    def forget(self, partition: int) -> None:
        """The partition moved to another worker."""
        self._progress.pop(partition, None)

    def partitions(self) -> list[int]:
        return sorted(self._progress)

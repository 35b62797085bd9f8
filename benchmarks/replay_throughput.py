"""Replay throughput, memory and state size of the detector core (issue: foundation).

Prints figures, asserts nothing about speed. Both loops read the same NDJSON file in the same run:

- bare loop: read each line and parse it with the stdlib `json` module, nothing else;
- replay: what `frustration replay` does per line (parse into a typed event, reorder in event
  time, run the detectors and the scorer, route flags), with flags discarded.

The ratio replay/bare is the figure that travels between machines. Detector state per tracked user
is the deep size of the engine's per-user objects (shared strings counted once) divided by the
users it tracks at the end.

    python benchmarks/replay_throughput.py [--events 1000000] [--seed 11]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.lab.simulator import Simulator
from streams.replay import Replay

EVENTS_PER_USER = 37.5  # what the simulator produces on average


def deep_size(root: Any) -> int:
    """Bytes of every object reachable from `root`, each counted once."""
    seen: set[int] = set()
    stack = [root]
    total = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, bool | type):
            continue
        seen.add(id(obj))
        total += sys.getsizeof(obj)
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            stack.extend(obj)
        elif hasattr(obj, "__slots__"):
            stack.extend(getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s))
        elif hasattr(obj, "__dict__"):
            stack.append(obj.__dict__)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()

    users = int(args.events / EVENTS_PER_USER) + 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.ndjson"
        started = time.perf_counter()
        stream = Simulator(users, seed=args.seed, duration_ms=6 * 3_600_000).run()
        with open(path, "wb") as out:
            for line in stream.event_lines():
                out.write(line + b"\n")
        n_events = len(stream.events)
        del stream
        gc.collect()
        took = time.perf_counter() - started
        size_mb = path.stat().st_size / 1e6
        print(
            f"simulated {n_events:,} events of {users:,} users in {took:.1f} s ({size_mb:.0f} MB)"
        )

        with open(path, "rb") as handle:
            lines = handle.readlines()
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        started = time.perf_counter()
        for line in lines:
            json.loads(line)
        bare_s = time.perf_counter() - started

        flags = 0

        def count_flag(_: dict[str, Any]) -> None:
            nonlocal flags
            flags += 1

        run = Replay(on_flag=count_flag)
        started = time.perf_counter()
        run.feed(lines)
        fed_s = time.perf_counter() - started
        users_tracked = len(run.engine.users)
        state_bytes = deep_size(run.engine.users)
        sources_bytes = deep_size(run.engine.judge.sources)
        started = time.perf_counter()
        summary = run.finish()
        replay_s = fed_s + (time.perf_counter() - started)
        peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    bare_rate = n_events / bare_s
    rate = n_events / replay_s
    print(f"bare json.loads loop : {bare_rate:12,.0f} events/s")
    print(f"replay (detect)      : {rate:12,.0f} events/s   ({flags} flag emissions, "
          f"{sum(summary.signals.values())} signals)")  # fmt: skip
    print(f"ratio replay / bare  : {rate / bare_rate:12.2f}")
    print(f"peak RSS             : {peak_rss_mb:12.0f} MB (input lines held in memory: "
          f"{rss_before / 1024:.0f} MB before replay)")  # fmt: skip
    print(f"tracked users        : {users_tracked:12,}")
    print(f"state per user       : {state_bytes / max(1, users_tracked):12.0f} bytes "
          f"(+ per-IP state {sources_bytes / 1024:.0f} KiB in all)")  # fmt: skip


if __name__ == "__main__":
    main()

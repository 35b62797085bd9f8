"""`frustration serve --demo`: simulated platform traffic, shifted to now and paced in real time,
so a newcomer sees flags arrive in `/queue` within a minute."""

from __future__ import annotations

import asyncio
import logging
import time

from signals.wire import AnyEvent, parse_event_object
from streams.embedded.runner import EmbeddedRunner
from streams.lab.simulator import Simulator

log = logging.getLogger(__name__)


async def feed_demo_traffic(runner: EmbeddedRunner, users: int = 400, seed: int = 42) -> None:
    """Replay simulated streams into the runner, one after another, with event times from now."""
    round_no = 0
    while True:
        stream = Simulator(
            # Everyone arrives within two minutes, so the first flags show within about a minute.
            users,
            seed=seed + round_no,
            duration_ms=1_920_000,
            frustrated_share=0.12,
        ).run()
        events = sorted(stream.events, key=lambda e: e["ts"])
        start_wall = time.time()
        shift = int(start_wall * 1000) - events[0]["ts"]
        log.info("demo: feeding %d simulated events of %d users", len(events), users)
        batch: list[AnyEvent] = []
        for raw in events:
            delay = (raw["ts"] + shift) / 1000 - time.time()
            if batch and (delay > 0.05 or len(batch) >= 100):
                runner.ingest(batch)
                batch = []
            if delay > 0.05:
                await asyncio.sleep(delay)
            shifted = dict(raw, ts=raw["ts"] + shift, event_id=f"demo{round_no}-{raw['event_id']}")
            batch.append(parse_event_object(shifted))
        if batch:
            runner.ingest(batch)
        round_no += 1

"""HTTP ingest throughput, POST-to-queue flag latency of `frustration serve`, and replay speed
(issues: service, 12).

Prints figures, asserts nothing. Starts a real `frustration serve` on a free port with a fresh
database and the default settings, then:

1. throughput: several concurrent clients POST pre-built JSON arrays of 100 simulated events
   (event times shifted to now) as fast as the server takes them, with the ingest journal on
   (every 202 fsynced first, the default) and off: the ratio is the cost of durability;
2. latency at a steady 2,000 events/s: background traffic in batches of 100 every 50 ms, dated
   within the last 50 ms (a live stream), and probe users each clicking one button six times,
   100 ms apart, each click posted as it happens; the probe's flag_id is known in advance (stable
   ids), so a poller times the sixth click's POST -> `GET /v1/flags/{id}` answering 200. The flag
   waits for the probe's own lateness (250 ms by default, on the wall clock) and then for the
   incident tracker, which follows the shared clock one lateness behind;
3. replay: `frustration replay`'s engine over a simulated file, as a ratio to a bare `json.loads`
   loop over the same lines (target >= 0.4).

    python benchmarks/service_ingest.py [--seconds 20] [--replay-events 300000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors.scoring import _flag_id
from streams.lab.simulator import Simulator
from streams.replay import Replay

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "frustration"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, journal: bool = True) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.port = free_port()
        env = dict(os.environ, FRUSTRATION_JOURNAL=str(journal).lower())
        cmd = [str(BIN), "serve", "--port", str(self.port), "--db", f"{self.tmp.name}/q.db",
               "--checkpoint", f"{self.tmp.name}/s.bin"]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(200):
            try:
                async with session.get(f"{self.url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("server did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.tmp.cleanup()


def batches_now(n_batches: int, seed: int) -> list[bytes]:
    events = (
        Simulator(max(50, n_batches * 100 // 37), seed=seed, duration_ms=3_600_000).run().events
    )
    events = sorted(events, key=lambda e: e["ts"])[: n_batches * 100]
    shift = int(time.time() * 1000) - events[-1]["ts"] - 1000
    out = []
    for i in range(0, len(events), 100):
        chunk = [dict(e, ts=e["ts"] + shift) for e in events[i : i + 100]]
        out.append(orjson.dumps(chunk))
    return out


async def throughput(seconds: float, journal: bool) -> float:
    server = Server(journal=journal)
    try:
        async with aiohttp.ClientSession() as session:
            await server.ready(session)
            bodies = batches_now(3000, seed=21)
            sent = 0
            deadline = time.perf_counter() + seconds
            headers = {"Content-Type": "application/json"}

            async def client(offset: int) -> None:
                nonlocal sent
                i = offset
                while time.perf_counter() < deadline:
                    body = bodies[i % len(bodies)]
                    async with session.post(f"{server.url}/v1/events", data=body,
                                            headers=headers) as r:  # fmt: skip
                        assert r.status == 202, await r.text()
                        await r.read()
                    sent += 100
                    i += 8

            started = time.perf_counter()
            await asyncio.gather(*(client(k) for k in range(8)))
            return sent / (time.perf_counter() - started)
    finally:
        server.stop()


async def latency(seconds: float) -> list[float]:
    server = Server()
    results: list[float] = []
    try:
        async with aiohttp.ClientSession() as session:
            await server.ready(session)
            background = batches_now(int(seconds * 20) + 20, seed=22)
            headers = {"Content-Type": "application/json"}
            pollers = []

            async def poll(flag_id: str, sent_at: float) -> None:
                while time.perf_counter() - sent_at < 30:
                    async with session.get(f"{server.url}/v1/flags/{flag_id}") as r:
                        await r.read()
                        if r.status == 200:
                            results.append(time.perf_counter() - sent_at)
                            return
                    await asyncio.sleep(0.005)

            start = time.perf_counter()
            tick = 0
            while time.perf_counter() - start < seconds:
                now_ms = int(time.time() * 1000)
                batch = orjson.loads(background[tick % len(background)])[:99]
                for k, e in enumerate(batch):  # a live stream: dated within the last 50 ms
                    e["ts"] = now_ms - 50 + k // 2
                    e["event_id"] = f"{e['event_id']}-{tick}"
                probe_round, step = divmod(tick, 12)
                user = f"probe-{probe_round}"
                if step % 2 == 0:  # one probe click every 100 ms, six per round
                    click = {"type": "click", "user_id": user, "ts": now_ms, "target": "#pay"}
                    batch.append(click | {"label": "Pay now", "page": "/billing"})
                if step == 10:
                    sent_at = time.perf_counter()
                    pollers.append(asyncio.create_task(poll(_flag_id(user, now_ms), sent_at)))
                async with session.post(f"{server.url}/v1/events", data=orjson.dumps(batch),
                                        headers=headers) as r:  # fmt: skip
                    await r.read()
                tick += 1
                await asyncio.sleep(max(0.0, start + tick * 0.05 - time.perf_counter()))
            await asyncio.gather(*pollers)
    finally:
        server.stop()
    return results


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def replay_ratio(n_events: int) -> tuple[float, float]:
    """(replay events/s, bare json.loads events/s) over the same simulated lines."""
    users = n_events // 37 + 1
    lines = list(Simulator(users, seed=11, duration_ms=6 * 3_600_000).run().event_lines())
    started = time.perf_counter()
    for line in lines:
        json.loads(line)
    bare = len(lines) / (time.perf_counter() - started)
    run = Replay(on_flag=lambda _: None)
    started = time.perf_counter()
    run.feed(lines)
    run.finish()
    return len(lines) / (time.perf_counter() - started), bare


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--replay-events", type=int, default=300_000)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs (figures vary with other load on the machine)")
    on = await throughput(args.seconds, journal=True)
    off = await throughput(args.seconds, journal=False)
    print(f"ingest, journal on (fsync per POST): {on:10,.0f} events/s  (8 clients, batches of 100)")
    print(f"ingest, journal off                : {off:10,.0f} events/s")
    print(f"durability cost: journal on / off  : {on / off:10.2f}")
    lat = await latency(args.seconds)
    if lat:
        p50, p99 = statistics.median(lat) * 1000, pct(lat, 0.99) * 1000
        print(f"flag latency at 2,000 events/s (defaults): p50 {p50:5.0f} ms  p99 {p99:5.0f} ms"
              f"  ({len(lat)} probes)")  # fmt: skip
    else:
        print("flag latency at 2,000 events/s (defaults): no probe flag arrived")
    rate, bare = replay_ratio(args.replay_events)
    print(
        f"replay: {rate:,.0f} events/s; bare json.loads loop: {bare:,.0f} events/s; "
        f"ratio {rate / bare:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())

"""The `frustration` command. Each sub-command parses its options, builds settings, calls into
`streams`, and prints `ErrorType: message` with exit code 1 when something it cannot recover from
happens (bad input lines are not that: they are counted and dead-lettered)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from signals.exceptions import FrustrationError


@contextlib.contextmanager
def _open_out(path: str | None) -> Iterator[IO[bytes] | None]:
    if path is None:
        yield None
    elif path == "-":
        yield sys.stdout.buffer
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            yield handle


def _ndjson(handle: IO[bytes]) -> Callable[[dict[str, Any]], None]:
    def write(obj: dict[str, Any]) -> None:
        handle.write(orjson.dumps(obj) + b"\n")

    return write


def _writer(handle: IO[bytes] | None) -> Callable[[dict[str, Any]], None] | None:
    return None if handle is None else _ndjson(handle)


def _lines(path: str) -> Iterator[bytes]:
    if path == "-":
        yield from sys.stdin.buffer
    else:
        with open(path, "rb") as handle:
            yield from handle


def _settings() -> Any:
    from streams.settings import Settings

    return Settings()


# -- replay ---------------------------------------------------------------------------------------
def cmd_replay(args: argparse.Namespace) -> int:
    from streams.replay import Replay

    settings = _settings()
    with (
        _open_out(args.dead_letter) as dead,
        _open_out(args.alerts) as alerts,
        _open_out(args.incidents) as incidents,
    ):
        run = Replay(
            settings.detection,
            on_flag=_ndjson(sys.stdout.buffer),
            on_alert=_writer(alerts),
            on_dead_letter=_writer(dead),
            on_incident=_writer(incidents),
            max_event_bytes=settings.max_event_bytes,
        )
        run.feed(_lines(args.events))
        summary = run.finish()
        sys.stdout.buffer.flush()
    for line in summary.lines_of_text():
        print(line, file=sys.stderr)
    return 0


# -- simulate -------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> int:
    from streams.lab.simulator import Outage, Simulator

    try:
        outages = [Outage.parse(spec, args.outage_users) for spec in args.outage or []]
    except ValueError as exc:
        print(f"ValueError: {exc}", file=sys.stderr)
        return 1
    stream = Simulator(
        args.users, seed=args.seed, frustrated_share=args.frustrated_share, outages=outages
    ).run()
    with _open_out(args.out) as out:
        assert out is not None
        for line in stream.event_lines():
            out.write(line + b"\n")
    if args.labels:
        with _open_out(args.labels) as labels:
            assert labels is not None
            for line in stream.truth_lines():
                labels.write(line + b"\n")
    frustrated = sum(t.frustrated for t in stream.truth)
    hit = sum(t.outage is not None for t in stream.truth)
    print(
        f"simulated {len(stream.events)} events of {args.users} users "
        f"({frustrated} frustrated), seed {args.seed}"
        + (f", plus {hit} clients hit by an outage" if hit else ""),
        file=sys.stderr,
    )
    return 0


# -- evaluate -------------------------------------------------------------------------------------
def cmd_evaluate(args: argparse.Namespace) -> int:
    from streams.lab.evaluation import (
        HEADER,
        evaluate,
        evaluate_baseline,
        incident_report,
        load_truth,
        lookalike_report,
    )
    from streams.replay import replay_all

    settings = _settings()
    events = list(_lines(args.events))
    with open(args.labels, "rb") as handle:
        truth = load_truth(handle)
    print(f"{len(events)} events, {len(truth)} users, {sum(t['frustrated'] for t in truth)} "
          "frustrated (ground truth)")  # fmt: skip
    print(HEADER)
    result = replay_all(events, settings.detection)
    for score in evaluate(events, truth, settings.detection, result=result):
        print(score.line())
    for rule in args.baseline or []:
        print(evaluate_baseline(events, truth, rule).line())
    for line in incident_report(result, truth).lines():
        print(line)
    for line in lookalike_report(result, truth):
        print(line)
    return 0


# -- schema ---------------------------------------------------------------------------------------
def cmd_schema(args: argparse.Namespace) -> int:
    from signals.schema import json_schema

    print(json.dumps(json_schema(args.which), indent=2))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from aiohttp import web

    from streams.embedded.demo import feed_demo_traffic
    from streams.embedded.server import RUNNER, build_app
    from streams.queue.api import run_app
    from streams.runtime import tune_gc

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.db is not None:
        overrides["db_path"] = args.db
    if args.checkpoint is not None:
        overrides["checkpoint_path"] = args.checkpoint
    settings = _settings().model_copy(update=overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = build_app(settings)
    if args.demo:

        async def start_demo(app: web.Application) -> Any:
            task = asyncio.create_task(feed_demo_traffic(app[RUNNER]))
            yield
            task.cancel()

        app.cleanup_ctx.append(start_demo)
    tune_gc()
    run_app(
        app,
        settings,
        f"frustration-signals is running{' with simulated demo traffic' if args.demo else ''}",
        "\n  ingest         POST {base}/v1/events\n"
        '  collector      <script src="{base}/collector.js" data-user-id="..."></script>',
    )
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    from streams.settings_doc import settings_markdown

    if args.markdown:
        print(settings_markdown())
    else:
        print(_settings().model_dump_json(indent=2))
    return 0


# -- agents ---------------------------------------------------------------------------------------
def cmd_agents(args: argparse.Namespace) -> int:
    """Per-agent tokens for the support queue, kept hashed in the queue database."""
    from streams.queue.store import QueueError, QueueStore

    db = args.db if args.db is not None else _settings().db_path
    store = QueueStore(db)
    try:
        if args.action == "add":
            try:
                token = store.add_agent(args.name)
            except QueueError as exc:
                print(f"QueueError: {exc}", file=sys.stderr)
                return 1
            print(token)
            print(
                f"agent {args.name!r} added: the token above is shown only this once; give it to "
                "them for the queue (Authorization: Bearer <token>, or /queue?token=<token>)",
                file=sys.stderr,
            )
        elif args.action == "remove":
            if not store.remove_agent(args.name):
                print(f"QueueError: no agent {args.name!r}", file=sys.stderr)
                return 1
        else:
            for agent in store.list_agents():
                print(agent["name"])
    finally:
        store.close()
    return 0


# -- Kafka runner ---------------------------------------------------------------------------------
def _kafka_settings(args: argparse.Namespace, **more: Any) -> Any:
    overrides = {k: v for k, v in more.items() if v is not None}
    if getattr(args, "broker", None) is not None:
        overrides["broker"] = args.broker
    return _settings().model_copy(update=overrides)


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.kafka.worker import run_worker

    settings = _kafka_settings(
        args,
        worker_web_port=args.web_port,
        worker_data_dir=args.data_dir,
        table_store=args.store,
        topic_partitions=args.partitions,
    )
    return run_worker(settings, worker_name=args.name)


def cmd_queue_sink(args: argparse.Namespace) -> int:
    from streams.kafka.sink import run_queue_sink

    settings = _kafka_settings(args, host=args.host, port=args.port, db_path=args.db)
    return run_queue_sink(settings)


def cmd_produce(args: argparse.Namespace) -> int:
    from streams.kafka.io import produce_events

    settings = _kafka_settings(args)
    summary = produce_events(settings, _lines(args.events), rate=args.rate)
    print(summary.text(), file=sys.stderr)
    return 1 if summary.failed else 0  # a load script must notice events Kafka did not take


def cmd_flags(args: argparse.Namespace) -> int:
    from streams.kafka.io import print_flags

    settings = _kafka_settings(args)
    return print_flags(
        settings, follow=args.follow, from_beginning=not args.new_only, idle_exit_s=args.idle_exit
    )


def _add_kafka_commands(sub: Any) -> None:
    broker_help = "Kafka bootstrap URL, kafka://HOST:PORT (default: FRUSTRATION_BROKER)"
    p = sub.add_parser(
        "worker",
        help="a Kafka runner worker (faust): events topic in, flags topic out",
        description="Start a faust-streaming worker: each partition of the events topic (keyed "
        "by user_id) is read in batches into its own detector engine; flags, security alerts "
        "and dead letters go to their topics. Start several to share the partitions. Faust's "
        "and frustration_ metrics are served on the web port at /metrics.",
    )
    p.add_argument("--broker", help=broker_help)
    p.add_argument("--web-port", type=int, help="web/metrics port (default 6066)")
    p.add_argument("--data-dir", type=Path, help="worker data directory")
    p.add_argument("--store", help="table store: memory:// (default) or rocksdb://")
    p.add_argument("--partitions", type=int, help="partitions of topics created when missing")
    p.add_argument("--name", help="stable worker name (static group membership)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "queue-sink",
        help="consume the flags topic into the support queue; serve /queue and /ops",
        description="Consume flags, security alerts and incidents from Kafka into the "
        "support-queue store and serve the same queue API, /queue and /ops pages and /metrics "
        "as `frustration serve` (without ingest).",
    )
    p.add_argument("--broker", help=broker_help)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8700)")
    p.add_argument("--db", type=Path, help="support-queue SQLite file")
    p.set_defaults(func=cmd_queue_sink)

    p = sub.add_parser(
        "produce",
        help="load NDJSON events into the events topic, keyed by user_id",
        description="Send NDJSON events (one per line) to the events topic keyed by user_id. "
        "Lines are sent as they are: the workers validate them and dead-letter bad ones.",
    )
    p.add_argument("events", nargs="?", default="-", help="NDJSON file, or - for stdin")
    p.add_argument("--broker", help=broker_help)
    p.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    p.set_defaults(func=cmd_produce)

    p = sub.add_parser(
        "flags",
        help="print flags from the flags topic as NDJSON",
        description="Print the flags on the flags topic as NDJSON, from the beginning (or only "
        "new ones with --new-only); with --follow keep printing new flags until interrupted.",
    )
    p.add_argument("--broker", help=broker_help)
    p.add_argument("--follow", action="store_true", help="keep printing new flags")
    p.add_argument("--new-only", action="store_true", help="skip flags already on the topic")
    p.add_argument(
        "--idle-exit",
        type=float,
        default=2.0,
        help="without --follow: stop after this many seconds without a new flag (default 2)",
    )
    p.set_defaults(func=cmd_flags)


# -- webhooks -------------------------------------------------------------------------------------
def parse_since(text: str, now: float | None = None) -> float:
    """Epoch seconds of `--since`: RFC 3339 / ISO 8601 (UTC when no offset), epoch seconds, or
    a duration back from now (90s, 30m, 2h, 1d)."""
    import time
    from datetime import UTC, datetime

    from signals.exceptions import ConfigurationError

    now = time.time() if now is None else now
    value = text.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
            return now - float(value[:-1]) * units[value[-1]]
        if value.replace(".", "", 1).isdigit():
            return float(value)
        stamp = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, IndexError):
        raise ConfigurationError(
            f"--since {text!r}: give a time (2026-12-01T10:00:00Z), epoch seconds or 2h"
        ) from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


def cmd_webhooks(args: argparse.Namespace) -> int:
    from streams.queue.store import QueueStore
    from streams.queue.webhooks import Outbox

    overrides = {"db_path": args.db} if args.db is not None else {}
    settings = _settings().model_copy(update=overrides)
    store = QueueStore(settings.db_path)
    try:
        outbox = Outbox(store, settings)
        if args.action == "replay":
            since = parse_since(args.since)
            n = outbox.replay(since, endpoint=args.endpoint, dead_only=args.dead_only)
            print(f"{n} webhook messages put back for delivery")
        else:
            print(json.dumps({"counts": outbox.counts(), "dead": outbox.dead(args.limit)}))
    finally:
        store.close()
    return 0


def _add_webhook_commands(sub: Any) -> None:
    p = sub.add_parser(
        "webhooks",
        help="webhook outbox: status, or re-send messages (replay)",
        description="The webhook outbox in the queue database. `replay --since` puts dead-"
        "lettered (and, unless --dead-only, delivered) messages written since then back in "
        "line; the running service or queue sink delivers them, with their original "
        "webhook-id. `status` prints counts and the dead-lettered messages as JSON.",
    )
    p.add_argument("action", choices=("replay", "status"))
    p.add_argument("--since", default="24h", help="time, epoch seconds or 2h (default 24h)")
    p.add_argument("--endpoint", help="only this endpoint (its name)")
    p.add_argument("--dead-only", action="store_true", help="only dead-lettered messages")
    p.add_argument("--db", type=Path, help="support-queue database (default: settings)")
    p.add_argument("--limit", type=int, default=50, help="status: dead messages to list")
    p.set_defaults(func=cmd_webhooks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="frustration",
        description="Real-time detection of user frustration (rage clicks, lock-outs, "
        "abandoned chats) for digital mental-health platforms.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "replay",
        help="run the detectors over NDJSON events; flags to stdout",
        description="Replay NDJSON events (one JSON object per line) through the detector core "
        "in event time. Flags go to stdout as NDJSON, a summary to stderr. Bad lines never stop "
        "the replay: they are counted by reason and written to --dead-letter.",
    )
    p.add_argument("events", nargs="?", default="-", help="NDJSON file, or - for stdin")
    p.add_argument("--dead-letter", metavar="PATH", help="write rejected and late lines here")
    p.add_argument("--alerts", metavar="PATH", help="write security alerts here")
    p.add_argument("--incidents", metavar="PATH", help="write incidents here")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "simulate",
        help="write a realistic labelled event stream",
        description="Write simulated platform traffic as NDJSON events, with a few percent of "
        "users in frustration episodes and benign look-alikes in realistic numbers; the ground "
        "truth (one JSON line per user) goes to --labels.",
    )
    p.add_argument("--users", type=int, default=1000, help="number of users (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--out", default="-", help="events file (default stdout)")
    p.add_argument("--labels", metavar="PATH", help="ground-truth file")
    p.add_argument(
        "--frustrated-share", type=float, default=0.04, help="share of frustrated users (0.04)"
    )
    p.add_argument(
        "--outage",
        action="append",
        metavar="KIND:DETAIL",
        help="add an outage on top of the ordinary traffic: login:<reason> (every login fails "
        "with that reason, e.g. login:service_unavailable) or click:<target> (that control does "
        "nothing, e.g. click:#pay); its clients first try within 3 minutes (repeatable)",
    )
    p.add_argument("--outage-users", type=int, default=600, help="clients hit by each outage (600)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser(
        "evaluate",
        help="precision, recall, F1 and detection delay on a labelled stream",
        description="Replay EVENTS and compare the flags with the ground truth LABELS (from "
        "`frustration simulate --labels`): user-level precision, recall and F1 per signal kind "
        "and overall, and the median detection delay in event time.",
    )
    p.add_argument("events", help="NDJSON events")
    p.add_argument("labels", help="ground truth, one JSON object per user")
    p.add_argument(
        "--baseline",
        action="append",
        choices=["posthog", "datadog"],
        help="also score a published rage-click rule (repeatable)",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "schema",
        help="print the JSON Schema of the wire format",
        description="Print the JSON Schema of input events (default), flags, security alerts "
        "or incidents.",
    )
    p.add_argument(
        "which", nargs="?", default="event", choices=["event", "flag", "alert", "incident"]
    )
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser(
        "serve",
        help="the embedded service: ingest, support queue, ops view, collector",
        description="Run the embedded service (one process, no broker): POST /v1/events, the "
        "support-queue API and /queue page, the /ops page, /metrics, /collector.js. Settings "
        "come from FRUSTRATION_* environment variables; the options below override them.",
    )
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8700)")
    p.add_argument("--db", type=Path, help="support-queue SQLite file")
    p.add_argument("--checkpoint", type=Path, help="detector-state checkpoint file")
    p.add_argument("--demo", action="store_true", help="also feed simulated traffic")
    p.set_defaults(func=cmd_serve)

    _add_kafka_commands(sub)

    _add_webhook_commands(sub)

    p = sub.add_parser(
        "agents",
        help="per-agent tokens for the support queue (add NAME prints the token once)",
        description="Manage the support agents who sign in to the queue with their own token. "
        "`add NAME` prints a new token once (only its hash is stored, in the queue database); "
        "`remove NAME` revokes it; `list` prints the names. Claims, notes and outcomes are "
        "recorded under the agent's name.",
    )
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("name", nargs="?", default="", help="the agent's name (add, remove)")
    p.add_argument("--db", type=Path, help="support-queue SQLite file")
    p.set_defaults(func=cmd_agents)

    p = sub.add_parser(
        "settings",
        help="print every setting and its current value",
        description="Print the effective settings (defaults overridden by FRUSTRATION_* "
        "environment variables) as JSON, or the documentation table with --markdown.",
    )
    p.add_argument("--markdown", action="store_true", help="the README's settings table")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except FrustrationError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

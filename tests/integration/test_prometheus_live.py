"""A real Prometheus scraping a real `frustration serve` with live traffic.

The module fixture starts the service and Prometheus 2.42 (Debian's package; scrape and rule
evaluation every second, rules from a copy of ``deploy/prometheus/alerts.yml``), waits for the
first scrape, then posts about 30 s of simulated traffic in real time (events sent as their
shifted timestamps come due, in batches of at most 100) plus three deliberate episodes: a rage
burst on ``#pay``, a lock-out (six failed logins) and credential stuffing (one IP failing for 16
accounts). Then every alert, recording-rule and dashboard-panel expression must run in
Prometheus, the traffic, signal and flag panels must show data, every rule must evaluate
without error, and the counters must agree with what the service answered and stored.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.lab.simulator import Simulator
from tests.integration.prometheus_fixture import (
    PrometheusServer,
    free_port,
    start_prometheus,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.service]

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "frustration-overview.json"

FEED_SECONDS = 30.0
BATCH_MAX = 100
SERVICE_ENV = {
    # Release buffered events quickly and let flags appear within the test.
    "FRUSTRATION_DETECTION__ALLOWED_LATENESS_MS": "500",
    "FRUSTRATION_IDLE_ADVANCE_S": "0.5",
    # A lock-out is signalled once no success followed the 5th failure for this long (default 60 s).
    "FRUSTRATION_DETECTION__LOGIN_CONFIRM_MS": "2000",
    # The lock-out below retries every 1.2-1.8 s on this compressed clock (a person takes 3 s or
    # more), so the brute-force pace and rhythm rules are scaled down with it.
    "FRUSTRATION_DETECTION__BRUTE_FORCE_MAX_MEDIAN_GAP_MS": "1000",
    "FRUSTRATION_DETECTION__BRUTE_FORCE_RHYTHM_MAX_JITTER_MS": "200",
}
#: Grafana's built-in variables, replaced by what they would typically expand to.
GRAFANA_BUILTINS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__interval_ms": "60000",
    "__range_s": "3600",
}
#: Panels (by title) that must show data after the traffic.
DATA_PANELS = (
    "Events accepted per second by type",
    "Signals per minute by kind",
    "New flags per minute by severity",
)


# -- the expressions under test
def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _rule_name(rule: dict[str, Any]) -> str:
    return str(rule.get("alert") or rule.get("record"))


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # collapsed rows nest their panels


def _grafana_expand(expr: str) -> str:
    """``expr`` as Grafana would send it: built-ins to typical values, template variables to
    ``.*`` (every template variable of this dashboard is a regex matcher when used)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain") or match.group("bracket")
        return GRAFANA_BUILTINS.get(name, ".*")

    pattern = r"\$\{(?P<braced>\w+)(?::[^}]*)?\}|\[\[(?P<bracket>\w+)\]\]|\$(?P<plain>\w+)"
    return re.sub(pattern, replace, expr)


def _panel_targets() -> list[tuple[str, str]]:
    """(panel title / refId, expanded expr) of every dashboard query."""
    targets = []
    for panel in _panels(_dashboard()["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                label = f"{panel.get('title')} / {target.get('refId', '?')}"
                targets.append((label, _grafana_expand(target["expr"])))
    return targets


RULE_EXPRS = [pytest.param(rule["expr"], id=_rule_name(rule)) for rule in _rules()]
PANEL_EXPRS = [pytest.param(expr, id=label) for label, expr in _panel_targets()]


# -- the service
def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _http_json(url: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


@dataclass(slots=True)
class Service:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path


def _serve_command() -> list[str]:
    script = Path(sys.executable).parent / "frustration"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "streams.cli"]


@contextmanager
def run_service(directory: Path) -> Iterator[Service]:
    """`frustration serve` on a free port with its queue and checkpoint in ``directory``."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRUSTRATION_")}
    env.update(SERVICE_ENV)
    log_path = directory / "service.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                *_serve_command(),
                "serve",
                "--port",
                str(port),
                "--db",
                str(directory / "q.db"),
                "--checkpoint",
                str(directory / "s.bin"),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    service = Service(process, f"http://127.0.0.1:{port}", port, log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"service exited with {process.returncode}:\n{_tail(log_path)}")
            try:
                if _http_json(f"{service.url}/readyz", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service not ready after 30 s:\n{_tail(log_path)}")
            time.sleep(0.1)
        yield service
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


# -- traffic
def _click(user: str, ts: int, event_id: str) -> dict[str, Any]:
    return {
        "type": "click",
        "user_id": user,
        "session_id": f"s-{user}",
        "ts": ts,
        "event_id": event_id,
        "page": "/billing",
        "target": "#pay",
        "label": "Pay now",
        "element": "button",
        "role": "button",
        "x": 520,
        "y": 560,
        "detail": 1,
    }


def _failed_login(user: str, ts: int, event_id: str, ip: str, device: str) -> dict[str, Any]:
    return {
        "type": "login",
        "user_id": user,
        "session_id": f"s-{user}",
        "ts": ts,
        "event_id": event_id,
        "outcome": "failure",
        "reason": "bad_password",
        "ip": ip,
        "device_id": device,
    }


def build_traffic(start_ms: int, run: str) -> list[dict[str, Any]]:
    """Simulated background traffic of the first FEED_SECONDS plus three deliberate episodes,
    shifted to start at ``start_ms``, in event-time order. Simulated client retries keep their
    shared event_id (they feed the duplicates counter); everything else has a unique one."""
    simulated = Simulator(300, seed=5, duration_ms=1_900_000).run().events
    shift = start_ms - min(e["ts"] for e in simulated)
    end_ms = start_ms + int(FEED_SECONDS * 1000)
    events = [
        dict(e, ts=e["ts"] + shift, event_id=f"{run}-{e['event_id']}")
        for e in simulated
        if e["ts"] + shift < end_ms
    ]
    # A rage burst: 10 clicks 200 ms apart on a broken "Pay now" button.
    t = start_ms + 4_000
    events += [_click("it-rage-1", t + 200 * i, f"{run}-rage-{i}") for i in range(10)]
    # A lock-out: 6 failed logins 1.2-1.8 s apart (unevenly, as a person) from their own address.
    t = start_ms + 6_000
    events += [
        _failed_login(
            "it-lockout-1", t + 1_500 * i + 300 * (i % 2), f"{run}-lock-{i}", "100.99.1.1", "d-it-1"
        )
        for i in range(6)
    ]
    # Credential stuffing: one address failing for 16 accounts within 4 s.
    t = start_ms + 10_000
    events += [
        _failed_login(f"it-victim-{i:02d}", t + 250 * i, f"{run}-atk-{i}", "203.0.113.50", "d-atk")
        for i in range(16)
    ]
    events.sort(key=lambda e: e["ts"])  # stable: retries stay after their original
    return events


@dataclass(slots=True)
class FeedResult:
    events: int = 0
    accepted: int = 0
    rejected: int = 0
    posts: int = 0
    posts_202: int = 0


def feed(service: Service, events: list[dict[str, Any]]) -> FeedResult:
    """Post each event once its timestamp has come (real time, no compression)."""
    result = FeedResult(events=len(events))
    i = 0
    while i < len(events):
        now_ms = time.time() * 1000
        batch: list[dict[str, Any]] = []
        while i < len(events) and events[i]["ts"] <= now_ms and len(batch) < BATCH_MAX:
            batch.append(events[i])
            i += 1
        if not batch:
            time.sleep(min(0.2, max(0.0, (events[i]["ts"] - now_ms) / 1000)))
            continue
        status, answer = _http_json(f"{service.url}/v1/events", batch)
        result.posts += 1
        assert status == 202, f"POST /v1/events answered {status}: {answer}"
        result.posts_202 += 1
        result.accepted += answer["accepted"]
        result.rejected += len(answer["rejected"])
    return result


# -- the live set-up
@dataclass(slots=True)
class Live:
    prometheus: PrometheusServer
    service: Service
    fed: FeedResult


def _prometheus_config(service_port: int) -> str:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [ALERTS.name],
        "scrape_configs": [
            {
                "job_name": "frustration",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{service_port}"]}],
            }
        ],
    }
    return yaml.safe_dump(config, sort_keys=False)


def _wait_for(
    what: str, condition: Callable[[], bool], timeout: float, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{logs()}")
        time.sleep(0.25)


def _total(prometheus: PrometheusServer, expr: str) -> float:
    values = prometheus.values(expr)
    return values[0] if values else 0.0


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    service_dir = Path(tempfile.mkdtemp(prefix="frustration-live-"))
    prometheus_dir: Path | None = None
    service: Service | None = None
    try:
        with run_service(service_dir) as service:
            with start_prometheus(_prometheus_config(service.port), [ALERTS]) as prometheus:
                prometheus_dir = prometheus.directory
                svc = service

                def logs() -> str:
                    return (
                        f"-- prometheus log:\n{prometheus.log_tail()}\n"
                        f"-- service log:\n{_tail(svc.log_path)}"
                    )

                # Counters are pre-initialised at 0: one scrape before the traffic gives rate()
                # and increase() their starting point.
                _wait_for(
                    "the first scrape of the service",
                    lambda: (
                        prometheus.values('up{job="frustration"}') == [1.0]
                        and bool(prometheus.values("frustration_events_received_total"))
                    ),
                    20,
                    logs,
                )
                start_ms = int(time.time() * 1000)
                fed = feed(service, build_traffic(start_ms, uuid.uuid4().hex[:8]))
                # The final counter values reach Prometheus once the service has released its
                # buffered events (idle advance) and Prometheus has scraped again.
                for what, expr, expected in [
                    ("all accepted events", "sum(frustration_events_received_total)", None),
                    ("a signal", "sum(frustration_signals_total)", 0),
                    ("a flag", "sum(frustration_flags_total)", 0),
                    ("a security alert", "sum(frustration_security_alerts_total)", 0),
                ]:

                    def reached(expr: str = expr, expected: int | None = expected) -> bool:
                        value = _total(prometheus, expr)
                        return value == fed.accepted if expected is None else value > expected

                    _wait_for(what, reached, 20, logs)
                _wait_for(
                    "several scrapes and the credential-stuffing alert firing",
                    lambda: (
                        _total(prometheus, 'count_over_time(up{job="frustration"}[5m])') >= 10
                        and any(
                            r["name"] == "FrustrationCredentialStuffing"
                            and r.get("state") == "firing"
                            for r in prometheus.rules()
                        )
                    ),
                    20,
                    logs,
                )
                time.sleep(2.5)  # a couple more evaluation cycles on the final data
                yield Live(prometheus, service, fed)
            assert prometheus.process.returncode == 0, prometheus.log_tail()
        assert service.process.returncode == 0, _tail(service.log_path)
    finally:
        shutil.rmtree(service_dir, ignore_errors=True)
    assert not service_dir.exists()
    assert prometheus_dir is not None and not prometheus_dir.exists()


# -- the tests
def _assert_runs(prometheus: PrometheusServer, expr: str) -> dict[str, Any]:
    answer = prometheus.query(expr)
    assert answer.get("status") == "success", (
        f"{expr}\n-> {answer.get('errorType')}: {answer.get('error')}"
    )
    return answer


@pytest.mark.parametrize("expr", RULE_EXPRS)
def test_rule_expression_runs(live: Live, expr: str) -> None:
    _assert_runs(live.prometheus, expr)


@pytest.mark.parametrize("expr", PANEL_EXPRS)
def test_panel_expression_runs(live: Live, expr: str) -> None:
    _assert_runs(live.prometheus, expr)


@pytest.mark.parametrize("title", DATA_PANELS)
def test_traffic_signal_and_flag_panels_show_data(live: Live, title: str) -> None:
    panels = [p for p in _panels(_dashboard()["panels"]) if p.get("title") == title]
    assert len(panels) == 1, f"dashboard has {len(panels)} panels titled {title!r}"
    targets = [t for t in panels[0].get("targets", []) if t.get("expr")]
    assert targets, f"panel {title!r} has no query"
    for target in targets:
        expr = _grafana_expand(target["expr"])
        result = _assert_runs(live.prometheus, expr)["data"]["result"]
        values = [float(item["value"][1]) for item in result]
        assert values, f"{title} / {target.get('refId')}: {expr} returned no series"
        assert max(values) > 0, f"{title} / {target.get('refId')}: {expr} is all zero: {result}"


def test_rules_loaded_and_evaluate_without_error(live: Live) -> None:
    rules = live.prometheus.rules()
    assert sorted(r["name"] for r in rules) == sorted(_rule_name(r) for r in _rules())
    alerting = [r for r in rules if r["type"] == "alerting"]
    assert len(alerting) == sum(1 for r in _rules() if "alert" in r)
    bad = [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not bad, f"rules not healthy: {bad}"


def test_credential_stuffing_alert_fires(live: Live) -> None:
    firing = live.prometheus.query('ALERTS{alertstate="firing", alertname=~"Frustration.*"}')
    names = {item["metric"]["alertname"] for item in firing["data"]["result"]}
    assert "FrustrationCredentialStuffing" in names
    _, alerts = _http_json(f"{live.service.url}/v1/alerts")
    assert alerts["alerts"], "the service stored no security alert"


def test_counters_agree_with_the_service(live: Live) -> None:
    prometheus, fed = live.prometheus, live.fed
    assert fed.accepted > 300 and fed.rejected == 0
    assert _total(prometheus, "sum(frustration_events_received_total)") == fed.accepted
    assert _total(prometheus, 'sum(frustration_ingest_requests_total{code="202"})') == fed.posts
    assert _total(prometheus, "sum(frustration_events_invalid_total)") == 0
    _, flags = _http_json(f"{live.service.url}/v1/flags?limit=1000")
    assert _total(prometheus, "sum(frustration_flags_total)") == flags["count"]
    assert {f["user_id"] for f in flags["flags"]} >= {"it-rage-1", "it-lockout-1"}
    assert not {f["user_id"] for f in flags["flags"]} & {f"it-victim-{i:02d}" for i in range(16)}
    open_flags = sum(1 for f in flags["flags"] if f["status"] == "open")
    assert _total(prometheus, 'sum(frustration_queue_items{status="open"})') == open_flags
    _, alerts = _http_json(f"{live.service.url}/v1/alerts")
    assert _total(prometheus, "sum(frustration_security_alerts_total)") == len(alerts["alerts"])
    # Events are posted as they happen: the event-time lag stays far below the alert's 60 s.
    p99 = _total(
        prometheus,
        "histogram_quantile(0.99, sum by (le) (rate(frustration_event_lag_seconds_bucket[5m])))",
    )
    assert 0 <= p99 < 10

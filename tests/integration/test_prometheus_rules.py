"""Prometheus, Alertmanager and Grafana configuration: promtool/amtool checks and consistency.

Needs promtool (Debian package ``prometheus``) and amtool (``prometheus-alertmanager``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from streams.metrics import FrustrationMetrics

pytestmark = pytest.mark.prometheus

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts_test.yml"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "frustration-overview.json"

METRIC_RE = re.compile(r"\bfrustration_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")
EXPECTED_ALERTS = {
    "FrustrationSurge",
    "FrustrationIncidentOpen",
    "FrustrationIngestStopped",
    "FrustrationInvalidEventRatioHigh",
    "FrustrationLateEventRatioHigh",
    "FrustrationRejectedEventsByReason",
    "FrustrationProcessingBehind",
    "FrustrationPartitionStalled",
    "FrustrationQueueBacklog",
    "FrustrationQueueCannotStore",
    "FrustrationCredentialStuffing",
    "FrustrationLoginAttack",
    "FrustrationAccountScan",
    "FrustrationTargetDown",
    "FrustrationFlagLatencyBudgetBurn",
    "FrustrationFlagLatencyBudgetBurnSlow",
    "FrustrationWebhookBacklog",
    "FrustrationWebhookDeadLetters",
}
SLO_WINDOWS = ("5m", "30m", "1h", "6h", "1d", "3d")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it with deploy/install-system-deps.sh")
    return path


def _run(*args: str, cwd: Path | None = None, stdin: str | None = None) -> str:
    proc = subprocess.run(
        list(args), cwd=cwd, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{output}"
    return output


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules() if "alert" in rule}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for panel in _dashboard()["panels"] for t in panel.get("targets", [])]


def _catalogue_names() -> set[str]:
    """Family and sample names of a fresh FrustrationMetrics on a private registry."""
    names: set[str] = set()
    for family in FrustrationMetrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _metric_names(text: str) -> set[str]:
    out = set()
    for match in METRIC_RE.finditer(text):
        name = match.group(0)
        if text[match.end() : match.end() + 1] == ":":  # part of a recording-rule name
            continue
        out.add(name)
    return out


def _strip(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


# ----------------------------------------------------------------------------- promtool/amtool


def test_promtool_check_rules() -> None:
    out = _run(_tool("promtool"), "check", "rules", str(ALERTS))
    assert "SUCCESS" in out


def test_promtool_check_config(tmp_path: Path) -> None:
    shutil.copy(PROM_CONFIG, tmp_path / "prometheus.yml")
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    out = _run(_tool("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    assert "1 rule files found" in out


def test_promtool_test_rules() -> None:
    out = _run(_tool("promtool"), "test", "rules", ALERTS_TEST.name, cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_promtool_check_metrics_on_fresh_exposition() -> None:
    text = generate_latest(FrustrationMetrics(CollectorRegistry()).registry).decode()
    proc = subprocess.run(
        [_tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0 and not problems, problems


def _amtool() -> str:
    amtool = shutil.which("amtool")
    assert amtool, "amtool missing: make test installs it (Debian package prometheus-alertmanager)"
    return amtool


def test_amtool_check_config() -> None:
    amtool = _amtool()
    out = _run(amtool, "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in out


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("alertname=FrustrationSurge", "severity=page"), "sre-pager"),
        (
            ("alertname=FrustrationCredentialStuffing", "team=security", "severity=page"),
            "sre-pager",
        ),
        (("alertname=FrustrationQueueBacklog", "severity=ticket"), "ticket-queue"),
        (("alertname=SomethingElse",), "ticket-queue"),
    ],
)
def test_alertmanager_routing(labels: tuple[str, ...], receiver: str) -> None:
    amtool = _amtool()
    out = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        f"--verify.receivers={receiver}",  # non-zero exit when the route differs
        *labels,
    )
    assert receiver in out.splitlines(), out


def test_alertmanager_grouping_and_inhibition() -> None:
    doc = yaml.safe_load(ALERTMANAGER.read_text())
    route = doc["route"]
    assert route["receiver"] == "ticket-queue"
    assert route["group_by"] == ["alertname", "kind"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "30s",
        "5m",
        "4h",
    )
    assert {r["name"] for r in doc["receivers"]} == {"sre-pager", "ticket-queue"}
    first = doc["inhibit_rules"][0]
    assert first["source_matchers"] == ['severity="page"']
    assert first["target_matchers"] == ['severity="ticket"']
    assert first["equal"] == ["alertname"]


# ----------------------------------------------------------------------------- rule consistency


def test_every_expected_alert_is_defined() -> None:
    assert set(_alert_rules()) == EXPECTED_ALERTS


def test_every_alert_has_severity_and_annotations() -> None:
    for name, rule in _alert_rules().items():
        labels = rule.get("labels", {})
        assert labels.get("severity") in {"page", "ticket"}, name
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert str(annotations.get(key, "")).strip(), f"{name} lacks annotation {key}"
        assert len(annotations["runbook"].split(". ")) >= 2, f"{name}: runbook too thin"
    assert _alert_rules()["FrustrationCredentialStuffing"]["labels"]["team"] == "security"
    assert _alert_rules()["FrustrationFlagLatencyBudgetBurn"]["labels"]["severity"] == "page"
    assert _alert_rules()["FrustrationFlagLatencyBudgetBurnSlow"]["labels"]["severity"] == "ticket"


def test_every_alert_has_a_firing_and_a_silent_unit_test() -> None:
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    silent: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            if expected:
                firing.add(check["alertname"])
                for alert in expected:
                    assert alert.get("exp_labels", {}).get("severity"), check
            else:
                silent.add(check["alertname"])
    alerts = set(_alert_rules())
    assert alerts - firing == set(), "alerts without a firing test case"
    assert alerts - silent == set(), "alerts without a silent test case"


def test_slo_recording_rules() -> None:
    records = {rule["record"]: rule["expr"] for rule in _rules() if "record" in rule}
    for window in SLO_WINDOWS:
        name = f"frustration:flag_latency_slo_errors:ratio_rate{window}"
        assert name in records, name
        expr = records[name]
        assert f'frustration_flag_latency_seconds_bucket{{le="1.0"}}[{window}]' in expr
        assert f"frustration_flag_latency_seconds_count[{window}]" in expr
    used = set()
    for rule in _alert_rules().values():
        used.update(re.findall(r"frustration:[a-z_]+:[a-z_0-9]+", rule["expr"]))
    assert used, "burn-rate alerts use the recording rules"
    assert used <= set(records), used - set(records)


def test_metric_names_in_rules_and_dashboard_exist() -> None:
    known = _catalogue_names()
    texts = {"alerts.yml": ALERTS.read_text(), "dashboard": DASHBOARD.read_text()}
    for source, text in texts.items():
        used = _metric_names(text)
        assert used, source
        unknown = {n for n in used if n not in known and _strip(n) not in known}
        assert not unknown, f"{source} uses metrics not in FrustrationMetrics: {sorted(unknown)}"


def test_prometheus_config_scrapes_the_service() -> None:
    doc = yaml.safe_load(PROM_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    service = jobs["frustration"]
    assert service.get("metrics_path", "/metrics") == "/metrics"
    assert service["static_configs"][0]["targets"] == ["frustration:8700"]
    assert doc["rule_files"] == ["alerts.yml"]
    targets = doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]


def test_prometheus_config_labels_every_frustration_target_with_its_mode() -> None:
    """FrustrationTargetDown tells a mode that is not deployed from an outage by this label."""
    doc = yaml.safe_load(PROM_CONFIG.read_text())
    modes = {
        job["job_name"]: {static["labels"]["mode"] for static in job["static_configs"]}
        for job in doc["scrape_configs"]
        if job["job_name"].startswith("frustration")
    }
    assert modes == {
        "frustration": {"embedded"},
        "frustration-workers": {"kafka"},
        "frustration-queue-sink": {"kafka"},
    }
    assert "on(mode)" in _alert_rules()["FrustrationTargetDown"]["expr"]


# ----------------------------------------------------------------------------- Grafana


def test_dashboard_panels() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    assert len(panels) >= 15
    ids = [panel["id"] for panel in panels]
    titles = [panel["title"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in panels:
        assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge"}, panel["id"]
        assert panel["title"].strip() and panel["description"].strip(), panel["id"]
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        targets = panel["targets"]
        assert targets, panel["title"]
        ref_ids = [t["refId"] for t in targets]
        assert ref_ids == [chr(ord("A") + i) for i in range(len(targets))], panel["title"]
        for target in targets:
            assert target["expr"].strip(), panel["title"]
            assert "$" not in target["expr"], "expressions must be plain PromQL"
            assert target.get("datasource", {"uid": "prometheus"})["uid"] == "prometheus"


def test_dashboard_covers_the_ops_views() -> None:
    exprs = "\n".join(_dashboard_exprs())
    for needle in (
        "frustration_events_received_total",
        "frustration_events_invalid_total",
        "frustration_signals_total",
        "frustration_flags_total",
        "frustration_flag_escalations_total",
        "frustration_security_alerts_total",
        "frustration_incidents_open",
        "frustration_queue_items",
        "frustration_queue_oldest_open_age_seconds",
        "histogram_quantile(0.5, sum by (le) (rate(frustration_event_lag_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(frustration_event_lag_seconds_bucket",
        "frustration_processing_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(frustration_flag_latency_seconds_bucket",
        'frustration_flag_latency_seconds_bucket{le="1.0"}',
        "frustration_tracked_users",
        'ALERTS{alertstate="firing"',
    ):
        assert needle in exprs, needle


def test_grafana_provisioning() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (prometheus,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prometheus["uid"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "provider.yml").read_text()
    )["providers"]
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"] == "/var/lib/grafana/dashboards"

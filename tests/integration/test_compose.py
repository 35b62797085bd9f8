"""docker-compose.yml is checked without a Docker engine: every service's image or build, its
command, its ports and every file it mounts must exist and fit together."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from streams.cli import build_parser
from streams.kafka.io import bootstrap_servers

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict] = COMPOSE["services"]
#: Services running the frustration image (built from this repository's Dockerfile).
APP_SERVICES = sorted(name for name, service in SERVICES.items() if "build" in service)
WORKERS = sorted(name for name in APP_SERVICES if SERVICES[name]["command"][0] == "worker")


def test_every_service_has_an_image_or_a_buildable_context() -> None:
    for name, service in SERVICES.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            build = service["build"]
            context = build if isinstance(build, str) else build["context"]
            assert (ROOT / context / "Dockerfile").is_file(), name
        if "image" in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_file_exists_in_the_repo(name: str) -> None:
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith(("./", "/")):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        else:
            assert source in COMPOSE.get("volumes", {}), f"{name}: undeclared volume {source}"


def _ports(service: dict) -> list[tuple[str, int, int]]:
    """(bind address or "", host port, container port) of each published port."""
    out = []
    for port in service.get("ports", []):
        *address, host, container = str(port).split(":")
        assert host.isdigit() and container.isdigit() and len(address) <= 1, port
        out.append((address[0] if address else "", int(host), int(container)))
    return out


def test_ports_are_host_to_container_and_unique() -> None:
    published = [host for service in SERVICES.values() for _, host, _ in _ports(service)]
    assert published and len(published) == len(set(published))


def test_the_app_command_is_a_valid_frustration_command() -> None:
    args = build_parser().parse_args(SERVICES["frustration"]["command"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert "FRUSTRATION_API_KEY" in SERVICES["frustration"]["environment"]
    assert "FRUSTRATION_QUEUE_TOKEN" in SERVICES["frustration"]["environment"]


def test_the_services_are_the_two_modes_and_the_monitoring() -> None:
    assert set(APP_SERVICES) == {"frustration", "worker-1", "worker-2", "queue-sink"}
    assert WORKERS == ["worker-1", "worker-2"]
    profiles = {name: service.get("profiles") for name, service in SERVICES.items()}
    assert profiles == {
        "frustration": ["embedded"],
        "kafka": ["kafka"],
        "worker-1": ["kafka"],
        "worker-2": ["kafka"],
        "queue-sink": ["kafka"],
        "prometheus": None,  # monitoring starts with either mode
        "alertmanager": None,
        "grafana": None,
    }
    # The header documents the two ways to start.
    header = COMPOSE_TEXT.split("services:")[0]
    assert "docker compose --profile embedded up" in header
    assert "docker compose --profile kafka up" in header


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_app_command_parses_and_fits_its_service(name: str) -> None:
    service = SERVICES[name]
    args = build_parser().parse_args(service["command"])
    assert args.command in {"serve", "worker", "queue-sink"}
    if args.command != "serve":
        # The broker URL is valid and names the compose broker's internal listener.
        assert bootstrap_servers(args.broker) == "kafka:9092"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"
    if args.command in {"serve", "queue-sink"}:
        # Reachable from the other containers, so protected by both secrets, required.
        assert args.host == "0.0.0.0"
        for secret in ("FRUSTRATION_API_KEY", "FRUSTRATION_QUEUE_TOKEN"):
            assert service["environment"][secret] == f"${{{secret}:?set {secret}}}"
        assert [container for _, _, container in _ports(service)] == [args.port]
    # Each process has its own data volume (SQLite queue, checkpoints, faust data dir).
    (volume,) = service["volumes"]
    source, target = volume.split(":")
    assert target == "/data" and source in COMPOSE["volumes"]


def test_the_workers_have_distinct_names_and_data_volumes() -> None:
    names = [build_parser().parse_args(SERVICES[w]["command"]).name for w in WORKERS]
    assert names == WORKERS  # static membership: each a stable name of its own
    volumes = [SERVICES[w]["volumes"][0].split(":")[0] for w in WORKERS]
    assert len(set(volumes)) == len(WORKERS)
    for worker in WORKERS:
        # The faust web port (metrics) must listen beyond the container's loopback.
        assert SERVICES[worker]["environment"]["FRUSTRATION_WORKER_WEB_HOST"] == "0.0.0.0"
        assert "ports" not in SERVICES[worker]  # scraped inside the network, never published


def _listeners(value: str) -> dict[str, str]:
    """{"PLAINTEXT": "kafka:9092", ...} of a Kafka listeners setting."""
    out = {}
    for item in value.split(","):
        name, _, address = item.partition("://")
        out[name] = address
    return out


def test_the_kafka_service_is_a_single_kraft_node_of_3_9_1() -> None:
    kafka = SERVICES["kafka"]
    env = {key: str(value) for key, value in kafka["environment"].items()}
    assert kafka["image"] == "apache/kafka:3.9.1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    assert len(env["CLUSTER_ID"]) == 22  # a base64 UUID, as kafka-storage random-uuid prints
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(protocols) == set(listeners)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    assert listeners[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == ":9093"
    assert advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "kafka:9092"
    # The host listener is published on loopback only, on the port it advertises.
    (host_port,) = _ports(kafka)
    assert host_port[0] == "127.0.0.1"
    assert advertised["HOST"] == f"127.0.0.1:{host_port[1]}"
    assert listeners["HOST"] == f":{host_port[2]}"
    # Topics come from ensure_topics with their partition counts, never from auto-creation.
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # The data (topics, offsets) is on the volume, not in the image's /tmp default.
    (volume,) = kafka["volumes"]
    assert volume == f"kafka-data:{env['KAFKA_LOG_DIRS']}"
    assert "kafka-broker-api-versions.sh" in " ".join(kafka["healthcheck"]["test"])


def _metrics_target(name: str) -> str:
    """host:port where Prometheus finds a frustration service's /metrics, from its command."""
    args = build_parser().parse_args(SERVICES[name]["command"])
    port = args.web_port if args.command == "worker" else args.port
    return f"{name}:{port}"


def test_prometheus_scrapes_exactly_the_services_that_exist() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    scraped: dict[str, str] = {}  # target -> mode label
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host = target.split(":")[0]
                assert host == "localhost" or host in SERVICES, f"{job['job_name']}: {target}"
                if job["job_name"].startswith("frustration"):
                    scraped[target] = static.get("labels", {}).get("mode", "")
    for manager in config["alerting"]["alertmanagers"]:
        for target in manager["static_configs"][0]["targets"]:
            assert target.split(":")[0] in SERVICES
    # Every frustration process is scraped on the port its command serves /metrics on, and its
    # mode label (which FrustrationTargetDown relies on) is the compose profile it runs in.
    expected = {_metrics_target(name): SERVICES[name]["profiles"][0] for name in APP_SERVICES}
    assert scraped == expected


def test_grafana_provisioning_points_at_the_mounted_dashboards() -> None:
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/provider.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert path in mounts and (ROOT / mounts[path]).is_dir()
    assert list((ROOT / mounts[path]).glob("*.json"))


def test_docker_compose_config_accepts_the_file_where_a_client_exists() -> None:
    docker = shutil.which("docker")
    probe = docker and subprocess.run([docker, "compose", "version"], capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("no docker compose client on this machine (the checks above still ran)")
    env = dict(os.environ, FRUSTRATION_API_KEY="k", FRUSTRATION_QUEUE_TOKEN="t")
    result = subprocess.run(
        [docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stderr

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

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]


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


def test_ports_are_host_to_container_and_unique() -> None:
    published = []
    for service in SERVICES.values():
        for port in service.get("ports", []):
            host, container = str(port).split(":")
            assert host.isdigit() and container.isdigit()
            published.append(host)
    assert len(published) == len(set(published))


def test_the_app_command_is_a_valid_frustration_command() -> None:
    args = build_parser().parse_args(SERVICES["frustration"]["command"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert "FRUSTRATION_API_KEY" in SERVICES["frustration"]["environment"]
    assert "FRUSTRATION_QUEUE_TOKEN" in SERVICES["frustration"]["environment"]


def test_prometheus_scrapes_only_services_that_exist() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        for static in job["static_configs"]:
            for target in static["targets"]:
                host = target.split(":")[0]
                assert host == "localhost" or host in SERVICES, f"{job['job_name']}: {target}"
    for manager in config["alerting"]["alertmanagers"]:
        for target in manager["static_configs"][0]["targets"]:
            assert target.split(":")[0] in SERVICES


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

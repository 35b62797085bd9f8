"""Pytest fixture that runs the real embedded service, ``frustration serve``, as a subprocess.

``service_factory`` (function scope) yields a callable that starts one server per call on a free
loopback port, with its own SQLite queue and checkpoint file under the test's ``tmp_path`` (or the
paths given, to restart on the same state), waits until ``/readyz`` answers 200 and returns a
:class:`Service`. Every server still running is stopped with SIGTERM at teardown.

The environment of the child is the test's own minus every ``FRUSTRATION_*`` variable, plus what
the test passes: a developer's shell settings never leak into a test. Standard output and standard
error go to one log file (``Service.log()``), so tests can check what the service writes.

HTTP goes through :mod:`urllib.request` without proxies (loopback only).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parents[2]
FRUSTRATION = REPO_ROOT / ".venv" / "bin" / "frustration"
READY_TIMEOUT_S = 20.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> Response:
    """One HTTP request; any status (4xx, 5xx included) comes back as a :class:`Response`."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            return Response(answer.status, dict(answer.headers.items()), answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers.items()), error.read())


@dataclass
class Service:
    """One running ``frustration serve`` process."""

    proc: subprocess.Popen[bytes]
    port: int
    db: Path
    checkpoint: Path
    log_path: Path
    env: dict[str, str]
    api_key: str | None = None
    queue_token: str | None = None
    _log_handle: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        auth: bool = True,
    ) -> Response:
        """A request with the right credential for the path when `auth` (the default)."""
        merged = dict(headers or {})
        if auth and "Authorization" not in merged:
            secret = self.api_key if path.startswith("/v1/events") else self.queue_token
            if secret is not None:
                merged["Authorization"] = f"Bearer {secret}"
        return http(method, self.url(path), body, merged)

    def get(self, path: str, *, auth: bool = True) -> Response:
        return self.request("GET", path, auth=auth)

    def post_json(self, path: str, data: Any, *, auth: bool = True) -> Response:
        body = json.dumps(data).encode()
        return self.request("POST", path, body, {"Content-Type": "application/json"}, auth=auth)

    def post_events(self, events: list[dict[str, Any]]) -> Response:
        """POST a JSON array of events; fails the test unless it is accepted."""
        answer = self.post_json("/v1/events", events)
        assert answer.status == 202, (answer.status, answer.text)
        return answer

    def flags(self, query: str = "") -> list[dict[str, Any]]:
        answer = self.get("/v1/flags?limit=1000" + (f"&{query}" if query else ""))
        assert answer.status == 200, (answer.status, answer.text)
        flags: list[dict[str, Any]] = answer.json()["flags"]
        return flags

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics summed over its labels, by sample name."""
        answer = self.get("/metrics")
        assert answer.status == 200, answer.status
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(answer.text):
            for sample in family.samples:
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
        return totals

    def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 10.0,
        interval: float = 0.1,
        what: str = "condition",
    ) -> float:
        """Poll `predicate` until true; returns the seconds it took (fails the test on timeout)."""
        started = time.monotonic()
        while True:
            if predicate():
                return time.monotonic() - started
            if self.proc.poll() is not None:
                pytest.fail(
                    f"service exited ({self.proc.returncode}) waiting for {what}:\n{self.log()}"
                )
            if time.monotonic() - started > timeout:
                pytest.fail(f"timed out after {timeout} s waiting for {what}")
            time.sleep(interval)

    def log(self) -> str:
        if self._log_handle is not None:
            self._log_handle.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `sig` and wait for the process to exit; returns its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                pytest.fail(f"service did not exit within {timeout} s of signal {sig}")
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        return self.proc.returncode


def child_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without FRUSTRATION_* settings, plus `env`."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRUSTRATION_")}
    base["PYTHONUNBUFFERED"] = "1"
    base.update(env or {})
    return base


def run_service(
    workdir: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
    db: Path | None = None,
    checkpoint: Path | None = None,
    port: int | None = None,
    wait_ready: bool = True,
    name: str = "service",
    command_name: str = "serve",
) -> Service:
    """Start ``frustration serve`` (or ``queue-sink``, the same pages fed from Kafka) in `workdir`,
    where its log also goes, and wait for /readyz."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port() if port is None else port
    db = workdir / "q.db" if db is None else db
    checkpoint = workdir / "state.bin" if checkpoint is None else checkpoint
    full_env = child_env({"FRUSTRATION_CHECKPOINT_PATH": str(checkpoint), **(env or {})})
    n = 0
    while (log_path := workdir / f"{name}-{n}.log").exists():
        n += 1
    handle = open(log_path, "wb")  # noqa: SIM115 - closed by Service.stop
    command = [
        str(FRUSTRATION),
        command_name,
        "--port",
        str(port),
        "--db",
        str(db),
        *args,
    ]
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    service = Service(
        proc,
        port,
        db,
        checkpoint,
        log_path,
        full_env,
        api_key=full_env.get("FRUSTRATION_API_KEY"),
        queue_token=full_env.get("FRUSTRATION_QUEUE_TOKEN"),
        _log_handle=handle,
    )
    if wait_ready:
        _wait_ready(service)
    return service


def _wait_ready(service: Service) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise RuntimeError(
                f"frustration serve exited with {service.proc.returncode}:\n{service.log()}"
            )
        try:
            if service.get("/readyz").status == 200:
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.05)
    service.stop()
    raise RuntimeError(f"frustration serve not ready within {READY_TIMEOUT_S} s:\n{service.log()}")


ServiceFactory = Callable[..., Service]


@pytest.fixture
def service_factory(tmp_path: Path) -> Iterator[ServiceFactory]:
    """Start real services with ``service_factory(env=..., args=..., db=..., checkpoint=...)``."""
    started: list[Service] = []

    def start(**kwargs: Any) -> Service:
        kwargs.setdefault("wait_ready", True)
        workdir = kwargs.pop("workdir", tmp_path)
        service = run_service(workdir, **kwargs)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def add_agent(db: Path | str, name: str) -> subprocess.CompletedProcess[str]:
    """`frustration agents add NAME --db DB` as an operator runs it: its stdout is the token."""
    return subprocess.run(
        [str(FRUSTRATION), "agents", "add", name, "--db", str(db)],
        env=child_env(),
        capture_output=True,
        text=True,
        check=True,
    )

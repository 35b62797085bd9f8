"""A real Prometheus (Debian's ``prometheus`` package) for integration tests.

:func:`start_prometheus` writes a configuration and rule files into a fresh temporary directory,
starts ``prometheus`` on a free loopback port, waits until ``/-/ready`` answers, yields a
:class:`PrometheusServer` with small HTTP-API helpers, and on exit terminates the process, waits
for it and removes the directory. If Prometheus exits or never becomes ready, the error carries
the tail of its log.

Rule files are copied next to the configuration under their base names, so the configuration
refers to them by base name (Prometheus resolves ``rule_files`` relative to the config file).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

__all__ = ["PrometheusError", "PrometheusServer", "free_port", "start_prometheus"]

LOG_TAIL_LINES = 40


class PrometheusError(RuntimeError):
    """Prometheus did not start, stopped unexpectedly or answered an API call with an error."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(slots=True)
class PrometheusServer:
    """A running Prometheus: its base URL, working directory and log file."""

    process: subprocess.Popen[bytes]
    url: str
    directory: Path
    log_path: Path

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return _tail(self.log_path, lines)

    def api(self, path: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
        """GET ``/api/v1/<path>``; the decoded JSON body, also for HTTP 4xx/5xx error answers."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # bad_data, execution errors: JSON body too
            body = exc.read()
            try:
                return json.loads(body)
            except ValueError:
                raise PrometheusError(f"{url}: HTTP {exc.code}: {body[:500]!r}") from exc

    def query(self, expr: str, time_s: float | None = None) -> dict[str, Any]:
        """An instant query; the whole answer (``status``, ``data``, ``error``, ``warnings``)."""
        params = {"query": expr}
        if time_s is not None:
            params["time"] = f"{time_s:.3f}"
        answer: dict[str, Any] = self.api("query", params)
        return answer

    def values(self, expr: str) -> list[float]:
        """The sample values of an instant query's vector or scalar result (raises on error)."""
        answer = self.query(expr)
        if answer.get("status") != "success":
            raise PrometheusError(f"query {expr!r} failed: {answer.get('error')}")
        data = answer["data"]
        if data["resultType"] == "vector":
            return [float(item["value"][1]) for item in data["result"]]
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        raise PrometheusError(f"query {expr!r}: unexpected result type {data['resultType']}")

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (alerting and recording) from ``/api/v1/rules``."""
        answer = self.api("rules")
        if answer.get("status") != "success":
            raise PrometheusError(f"/api/v1/rules failed: {answer}")
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]


def _wait_ready(server: PrometheusServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = server.process.poll()
        if code is not None:
            raise PrometheusError(
                f"prometheus exited with {code} while starting; log tail:\n{server.log_tail()}"
            )
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=1.0) as response:
                if response.status == 200:
                    return
        except OSError:  # refused while starting, or 503 until the TSDB is open
            pass
        time.sleep(0.1)
    raise PrometheusError(
        f"prometheus not ready after {timeout:.0f} s; log tail:\n{server.log_tail()}"
    )


def _stop(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextmanager
def start_prometheus(
    config_text: str,
    rule_files: Iterable[str | Path] = (),
    *,
    ready_timeout: float = 30.0,
) -> Iterator[PrometheusServer]:
    """Run Prometheus with ``config_text`` as ``prometheus.yml`` and copies of ``rule_files``.

    Raises :class:`PrometheusError` (with the log tail) if the binary is missing, the
    configuration is rejected or the server is not ready within ``ready_timeout`` seconds; also
    if it has died by the time the block ends (the block's own exception takes precedence).
    """
    binary = shutil.which("prometheus")
    if binary is None:
        raise PrometheusError("prometheus not found: install it with deploy/install-system-deps.sh")
    directory = Path(tempfile.mkdtemp(prefix="frustration-prometheus-"))
    try:
        for rule_file in rule_files:
            source = Path(rule_file)
            shutil.copyfile(source, directory / source.name)
        config_path = directory / "prometheus.yml"
        config_path.write_text(config_text)
        log_path = directory / "prometheus.log"
        port = free_port()
        log: TextIO
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config_path}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                cwd=directory,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = PrometheusServer(process, f"http://127.0.0.1:{port}", directory, log_path)
        try:
            _wait_ready(server, ready_timeout)
            yield server
            code = process.poll()
            if code is not None:
                raise PrometheusError(
                    f"prometheus exited with {code} during the test; log tail:\n{server.log_tail()}"
                )
        finally:
            _stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)

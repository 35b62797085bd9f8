"""Headless Chromium helpers for end-to-end tests.

Uses Debian's ``chromium`` package (``/usr/bin/chromium``) through Playwright's sync API;
``playwright install`` is never needed. Only loopback pages are served, so every flag
that makes Chromium phone home is switched off.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from playwright.sync_api import BrowserContext, Page, sync_playwright

CHROMIUM_PATH = Path(os.environ.get("FRUSTRATION_CHROMIUM", "/usr/bin/chromium"))

CHROMIUM_ARGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class ChromiumMissingError(RuntimeError):
    """Chromium from Debian's packages is not installed."""


def chromium_path() -> Path:
    """Return the Chromium executable or raise :class:`ChromiumMissingError`."""
    if not (CHROMIUM_PATH.is_file() and os.access(CHROMIUM_PATH, os.X_OK)):
        raise ChromiumMissingError(
            f"Chromium not found at {CHROMIUM_PATH}: install it with "
            "`apt-get install -y chromium` (Debian package), or set FRUSTRATION_CHROMIUM "
            "to another executable. `playwright install` is not used."
        )
    return CHROMIUM_PATH


@contextmanager
def launch_chromium(
    *, viewport: tuple[int, int] = (1024, 640), timeout_ms: float = 10_000
) -> Iterator[BrowserContext]:
    """Start headless Chromium with a fresh temporary profile and yield its context.

    The profile directory and the browser are removed again on exit.
    """
    executable = chromium_path()
    profile = tempfile.mkdtemp(prefix="frustration-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(executable),
                headless=True,
                args=list(CHROMIUM_ARGS),
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            context.set_default_timeout(timeout_ms)
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(page: Page, path: str | os.PathLike[str]) -> Path:
    """Save a full-page PNG screenshot to ``path`` (parent directories are created)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=True)
    return target


class PageServer(ThreadingHTTPServer):
    """A site of our test pages on its own port (another origin than the service), served by
    `handler`, which finds the service's address at `self.server.service_base`."""

    daemon_threads = True

    def __init__(self, service_base: str, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.service_base = service_base

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

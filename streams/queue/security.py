"""Who is asking, and whether a page request may change anything.

Identity (`identify`): an agent is who the deployment says.

- behind an authenticating reverse proxy: `proxy_user_header` (e.g. `X-Forwarded-Email`), trusted
  only on connections from `trusted_proxies`;
- a per-agent token (`frustration agents add NAME`), stored hashed in the queue database;
- the shared queue token (`FRUSTRATION_QUEUE_TOKEN`), or nothing on loopback: then the agent types
  a name on the page, as before.

Page requests that change something (claim, resolve, notes) are refused unless they carry the
page's CSRF token and, when the browser says where they come from (`Sec-Fetch-Site`, `Origin`),
come from this origin. The token is an HMAC of who is signed in under a key kept in the queue
database, so a page another site shows cannot know it. JSON requests need no token: a browser
cannot send `application/json` cross-origin without a preflight, which the queue never answers.

Every response carries the security headers (`SECURITY_HEADERS`): no inline script or style,
no framing, no sniffing, no referrer, nothing cached.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}

#: Longest agent name taken from a header or a form.
MAX_AGENT_CHARS = 64


def _bytes(value: str) -> bytes:
    return value.encode("utf-8", "surrogatepass")


def same_secret(given: str | None, expected: str) -> bool:
    """Constant-time comparison that any input (non-ASCII, odd bytes) answers, never raises."""
    if given is None:
        return False
    try:
        return hmac.compare_digest(_bytes(given), _bytes(expected))
    except UnicodeError:
        return False


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        for name, value in SECURITY_HEADERS.items():
            exc.headers.setdefault(name, value)
        exc.headers.setdefault("Cache-Control", "no-store")
        raise
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # The queue's pages and API hold user ids: never cached (the collector sets its own).
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# -- identity --------------------------------------------------------------------------------------
Via = Literal["proxy", "agent_token", "shared_token", "open"]


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is signed in. `agent` is None when the deployment cannot tell (the shared token, or
    no credential on loopback): then the agent's name comes from the form."""

    via: Via
    agent: str | None = None

    @property
    def key(self) -> str:
        return f"{self.via}:{self.agent or ''}"


def clean_agent_name(value: str) -> str | None:
    """An agent name from a header or a form: printable, trimmed, at most 64 characters."""
    value = value.strip()
    if not value or len(value) > MAX_AGENT_CHARS or not value.isprintable():
        return None
    return value


def from_trusted_proxy(remote: str | None, proxies: tuple[str, ...]) -> bool:
    if not remote or not proxies:
        return False
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return False
    for entry in proxies:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


# -- CSRF -----------------------------------------------------------------------------------------
def csrf_token(key: bytes, identity: Identity) -> str:
    return hmac.new(key, _bytes(identity.key), hashlib.sha256).hexdigest()[:40]


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def cross_site_reason(request: web.Request) -> str | None:
    """Why a state-changing request is not from this site's own pages, or None."""
    # Browsers that send Sec-Fetch-Site say exactly where a request comes from (another port of
    # this host is "same-site", and refused). Older ones: the Origin, when it names one; our own
    # Referrer-Policy (no-referrer) makes form posts say "null", so that alone proves nothing
    # either way, and the form's token decides.
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site in ("same-origin", "none"):
            return None
        return f"sent from another site ({fetch_site})"
    origin = request.headers.get("Origin")
    if origin is not None and origin != "null":
        parts = urlsplit(origin)
        if f"{parts.scheme}://{parts.netloc}" != own_origin(request):
            return "sent from another origin"
    return None


def form_token(data: dict[str, Any]) -> str | None:
    value = data.get("csrf")
    return value if isinstance(value, str) else None

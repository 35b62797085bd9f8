"""PostHog's capture API: bodies in, our events out.

Shapes, as the SDKs send them (``posthog`` for Python to ``/batch/``, posthog-js to ``/e/``):
``{"api_key": ..., "batch": [event, ...]}``, one event ``{"api_key": ..., "event": ...}``, or a
JSON array of events (posthog-js; each carries ``properties.token``); gzip with or without a
Content-Encoding header (``?compression=gzip-js``), or a form field ``data`` holding base64 JSON.
The project token (``api_key``, ``token``, or every event's ``properties.token``) is compared with
the service's ingest key.

- ``$autocapture`` with ``$event_type`` ``click`` becomes a click: the target from the
  ``$elements`` chain (``#id``, ``[data-testid=...]``, else ``tag.class`` steps up to one of
  those, as our collector builds it), the element's tag, the label from its ``aria-label`` else
  ``$el_text`` (whitespace collapsed, trimmed, 64 characters, for buttons and links only, as the
  collector does), the role (explicit, else implied by the tag) and the path of
  ``$current_url`` without its query as the page.
- ``$rageclick`` is PostHog's own verdict (three clicks within a second; we measured its rule at
  precision 0.03): it is counted as corroborating evidence and never becomes an event, so it can
  never flag on its own; our detector decides from the ``$autocapture`` clicks themselves.
- Other events become ours by the mapping file's ``posthog`` rules; the rest are unmapped.

``distinct_id`` is the client, ``uuid`` the event id, ``properties.$session_id`` the session.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from signals.exceptions import InvalidEvent
from streams.sources.common import BadBody, Converted, load_json
from streams.sources.mapping import SourceMapping

_IMPLICIT_ROLES = {
    "button": "button",
    "submit": "button",
    "reset": "button",
    "image": "button",
    "checkbox": "checkbox",
    "radio": "radio",
    "range": "slider",
    "number": "spinbutton",
}
_TEXT_LABEL_ROLES = ("button", "link", "tab", "menuitem")
_CHAIN_SPLIT = re.compile(r';(?=(?:[^"]*"[^"]*")*[^"]*$)')
_CHAIN_ATTR = re.compile(r'(?P<key>[\w$:-]+?)="(?P<value>(?:[^"\\]|\\.)*)"')


def decode(body: bytes, content_type: str | None) -> Any:
    """The JSON of a (gunzipped) capture body, also from a ``data=<base64>`` form post."""
    if (content_type or "").startswith("application/x-www-form-urlencoded") or body.startswith(
        b"data="
    ):
        data = parse_qs(body.decode("latin-1")).get("data", [""])[0]
        try:
            body = base64.b64decode(data + "=" * (-len(data) % 4))
        except (binascii.Error, ValueError) as exc:
            raise BadBody("not_json", f"data: not base64: {exc}") from None
    return load_json(body)


def events_of(body: Any) -> tuple[list[Any], str | None]:
    """The events of a decoded body and the body-level token (None: each event carries one)."""
    if isinstance(body, list):
        return body, None
    if not isinstance(body, dict):
        raise BadBody("not_object", "body must be a JSON object or array")
    token = body.get("api_key") or body.get("token")
    token = token if isinstance(token, str) else None
    batch = body.get("batch")
    if batch is not None:
        if not isinstance(batch, list):
            raise BadBody("wrong_type", "batch: must be a list of events")
        return batch, token
    return [body], token


def tokens_ok(events: list[Any], token: str | None, check: Any) -> bool:
    """The body's token, or (posthog-js) every event's ``properties.token``, passes `check`."""
    if token is not None:
        return bool(check(token))
    if not events:
        return bool(check(None))
    for event in events:
        props = event.get("properties") if isinstance(event, dict) else None
        given = props.get("token") if isinstance(props, dict) else None
        if not check(given if isinstance(given, str) else None):
            return False
    return True


def _clip(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    clipped = " ".join(text.split())[:64]
    return clipped or None


def parse_chain(chain: str) -> list[dict[str, Any]]:
    """``$elements_chain`` (PostHog's string form of ``$elements``) as a list of elements."""
    elements: list[dict[str, Any]] = []
    for part in _CHAIN_SPLIT.split(chain):
        head, _, attrs = part.partition(":")
        tag, *classes = head.split(".")
        element: dict[str, Any] = {"tag_name": tag, "attr_class": classes}
        for match in _CHAIN_ATTR.finditer(attrs):
            key, value = match["key"], match["value"].replace('\\"', '"')
            if key == "text":
                element["$el_text"] = value
            elif key in ("nth-child", "nth-of-type"):
                element[key.replace("-", "_")] = int(value) if value.isdigit() else None
            else:
                element[key] = value
        elements.append(element)
    return elements


def _css_escape(ident: str) -> str:
    return re.sub(r"[^\w-]", lambda m: "\\" + m.group(0), ident)


def _classes(element: dict[str, Any]) -> list[str]:
    classes = element.get("attr_class") or element.get("classes")
    if isinstance(classes, str):
        classes = classes.split()
    if not isinstance(classes, list):
        return []
    return [c for c in classes if isinstance(c, str) and c]


def selector(elements: list[dict[str, Any]]) -> str | None:
    """Our collector's target for the clicked element: ``#id``, ``[data-testid=...]``, else a
    short ``tag.class:nth-of-type(n)`` path up to such an anchor or ``body`` (<= 200 chars).
    PostHog gives ``nth_of_type`` also for an only child, so the position is kept from 2 on."""
    sel = ""
    for element in elements[:6]:
        tag = str(element.get("tag_name") or "").lower()
        ident = element.get("attr__id")
        testid = element.get("attr__data-testid")
        if isinstance(ident, str) and ident:
            part = "#" + _css_escape(ident)
        elif isinstance(testid, str) and testid:
            escaped = testid.replace("\\", "\\\\").replace('"', '\\"')
            part = f'[data-testid="{escaped}"]'
        else:
            classes = _classes(element)
            nth = element.get("nth_of_type")
            part = tag + ("." + _css_escape(classes[0]) if classes else "")
            if isinstance(nth, int) and nth > 1:
                part += f":nth-of-type({nth})"
        joined = f"{part} > {sel}" if sel else part
        if len(joined) > 200:
            return sel or joined[:200]
        sel = joined
        if part[:1] in ("#", "[") or tag == "body":
            break
    return sel or None


def click_of(props: dict[str, Any]) -> dict[str, Any] | None:
    """The click fields of an ``$autocapture`` click (None when it has no element)."""
    elements = props.get("$elements")
    if not isinstance(elements, list) or not elements:
        chain = props.get("$elements_chain")
        elements = parse_chain(chain) if isinstance(chain, str) and chain else []
    elements = [e for e in elements if isinstance(e, dict)]
    if not elements:
        return None
    el = elements[0]
    tag = str(el.get("tag_name") or "").lower() or None
    input_type = el.get("attr__type") if tag == "input" else None
    input_type = input_type.lower() if isinstance(input_type, str) else None
    explicit = str(el.get("attr__role") or "").strip().split(" ")[0]
    role = explicit or None
    if role is None:
        if tag == "button":
            role = "button"
        elif tag == "a" and el.get("attr__href"):
            role = "link"
        elif input_type is not None:
            role = _IMPLICIT_ROLES.get(input_type)
    label = _clip(el.get("attr__aria-label"))
    if label is None:
        if tag == "input":
            label = _clip(el.get("attr__value")) if input_type in ("button", "submit") else None
        elif tag in ("button", "a") or explicit in _TEXT_LABEL_ROLES:
            label = _clip(el.get("$el_text") or props.get("$el_text"))
    click: dict[str, Any] = {
        "target": selector(elements),
        "element": tag,
        "label": label,
        "role": role,
        "input_type": input_type,
    }
    url = props.get("$current_url")
    path = urlsplit(url).path if isinstance(url, str) and url else props.get("$pathname")
    if isinstance(path, str) and path:
        click["page"] = path
    return {k: v for k, v in click.items() if v is not None}


def convert(events: list[Any], mapping: SourceMapping) -> Converted:
    """PostHog events -> our wire-format dicts (not validated yet: see `Converted.to_batch`)."""
    out = Converted("posthog")
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            out.reject(index, event, InvalidEvent("not_object", "event: not a JSON object"))
            continue
        name = event.get("event")
        props = event.get("properties")
        props = props if isinstance(props, dict) else {}
        if name == "$rageclick":
            out.corroborating += 1
            continue
        is_click = name == "$autocapture" and props.get("$event_type") == "click"
        rule = mapping.rule("posthog", name) if isinstance(name, str) and not is_click else None
        if not is_click and rule is None:
            out.unmapped += 1
            continue
        user = event.get("distinct_id") or props.get("distinct_id")
        if user is None or user == "" or isinstance(user, dict | list | bool):
            out.reject(index, event, InvalidEvent("missing_field", "distinct_id: missing"))
            continue
        base: dict[str, Any] = {"user_id": str(user)}
        ts = event.get("timestamp") or props.get("$time")
        if isinstance(ts, float | int) and not isinstance(ts, bool) and ts < 1e11:
            ts = int(ts * 1000)  # $time is epoch seconds
        if ts is not None:
            base["ts"] = ts
        if isinstance(event.get("uuid"), str):
            base["event_id"] = event["uuid"]
        if isinstance(props.get("$session_id"), str):
            base["session_id"] = props["$session_id"]
        if is_click:
            click = click_of(props)
            if click is None:
                out.reject(index, event, InvalidEvent("missing_field", "$elements: missing"))
                continue
            out.add(index, {**base, "type": "click", **click})
        elif rule is not None:
            out.add(index, rule.apply(event, base))
    return out

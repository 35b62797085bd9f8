"""The mapping file: which Segment / RudderStack / PostHog events become our events, and how.

A TOML file of ``[[rule]]`` tables (the default ships as ``default_mapping.toml`` beside this
module; ``FRUSTRATION_SOURCE_MAPPING_PATH`` names another)::

    [[rule]]
    source = "segment"            # segment (also RudderStack, Jitsu) or posthog
    event = "Login Failed"        # the source event name, exact match
    type = "login"                # click, login or chat
    set = { outcome = "failure" } # constant wire fields
    fields = { reason = "properties.reason", ip = ["context.ip", "properties.ip"] }

A rule may only fill fields of the wire format of its type, and only with scalars (a path that
leads to an object or a list is skipped): free text a person wrote never enters a model. A file
that names an unknown field, type or source is refused at start-up (`ConfigurationError`).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from signals.events import ChatEvent, ClickEvent, LoginEvent
from signals.exceptions import ConfigurationError

Source = Literal["segment", "posthog"]
SOURCES: tuple[Source, ...] = ("segment", "posthog")

_MODELS: dict[str, type[ClickEvent | LoginEvent | ChatEvent]] = {
    "click": ClickEvent,
    "login": LoginEvent,
    "chat": ChatEvent,
}
#: Filled from the envelope of every message; a rule may still override them.
_ENVELOPE = frozenset({"user_id", "ts", "event_id", "session_id", "type"})


@dataclass(frozen=True, slots=True)
class Rule:
    """One source event name -> one of our event types."""

    source: Source
    event: str
    type: str
    set: Mapping[str, Any] = field(default_factory=dict)
    fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def apply(self, message: Mapping[str, Any], base: dict[str, Any]) -> dict[str, Any]:
        """Our wire-format dict for `message` (`base`: user_id, ts, ... from the envelope)."""
        out = dict(base)
        out["type"] = self.type
        out.update(self.set)
        for name, paths in self.fields.items():
            for path in paths:
                value = lookup(message, path)
                if value is not None and isinstance(value, str | int | float | bool):
                    out[name] = value
                    break
        return out


def lookup(message: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path (``context.page.path``), or None."""
    value: Any = message
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


@dataclass(frozen=True, slots=True)
class SourceMapping:
    """The rules of a mapping file, by source and event name."""

    rules: Mapping[tuple[str, str], Rule]

    def rule(self, source: Source, event: str) -> Rule | None:
        return self.rules.get((source, event))


def _rule(index: int, raw: Any) -> Rule:
    where = f"rule {index + 1}"
    if not isinstance(raw, dict):
        raise ConfigurationError(f"{where}: must be a table")
    unknown = set(raw) - {"source", "event", "type", "set", "fields"}
    if unknown:
        raise ConfigurationError(f"{where}: unknown keys {sorted(unknown)}")
    source, event, kind = raw.get("source"), raw.get("event"), raw.get("type")
    if source not in SOURCES:
        raise ConfigurationError(f"{where}: source must be one of {', '.join(SOURCES)}")
    if not isinstance(event, str) or not event:
        raise ConfigurationError(f"{where}: event must be a non-empty string")
    if kind not in _MODELS:
        raise ConfigurationError(f"{where}: type must be one of {', '.join(_MODELS)}")
    allowed = set(_MODELS[kind].model_fields) - {"type"}
    constants = raw.get("set", {})
    fields = raw.get("fields", {})
    if not isinstance(constants, dict) or not isinstance(fields, dict):
        raise ConfigurationError(f"{where}: set and fields must be tables")
    for name in (*constants, *fields):
        if name not in allowed:
            raise ConfigurationError(
                f"{where}: {name!r} is not a field of a {kind} event "
                f"(one of {', '.join(sorted(allowed))})"
            )
    for name, value in constants.items():
        if not isinstance(value, str | int | float | bool):
            raise ConfigurationError(f"{where}: set.{name} must be a scalar")
    paths: dict[str, tuple[str, ...]] = {}
    for name, spec in fields.items():
        options = (spec,) if isinstance(spec, str) else spec
        if not (
            isinstance(options, list | tuple)
            and options
            and all(isinstance(p, str) and p for p in options)
        ):
            raise ConfigurationError(f"{where}: fields.{name} must be a path or a list of paths")
        paths[name] = tuple(options)
    return Rule(source, event, kind, dict(constants), paths)


def parse_mapping(text: str, origin: str = "mapping") -> SourceMapping:
    """Read mapping-file text; a `ConfigurationError` naming the rule for anything wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{origin}: not TOML: {exc}") from None
    unknown = set(data) - {"rule"}
    if unknown:
        raise ConfigurationError(f"{origin}: unknown top-level keys {sorted(unknown)}")
    rules: dict[tuple[str, str], Rule] = {}
    for index, raw in enumerate(data.get("rule", [])):
        try:
            rule = _rule(index, raw)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{origin}: {exc}") from None
        key = (rule.source, rule.event)
        if key in rules:
            raise ConfigurationError(f"{origin}: rule {index + 1}: {key} is mapped twice")
        rules[key] = rule
    return SourceMapping(rules)


def default_mapping_text() -> str:
    return resources.files("streams.sources").joinpath("default_mapping.toml").read_text()


def load_mapping(path: Path | None = None) -> SourceMapping:
    """The mapping file at `path`, or the default one shipped with the package."""
    if path is None:
        return parse_mapping(default_mapping_text(), "default_mapping.toml")
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigurationError(f"cannot read mapping file {path}: {exc}") from None
    return parse_mapping(text, str(path))

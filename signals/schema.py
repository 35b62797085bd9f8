"""JSON Schema of the wire format (`frustration schema`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import TypeAdapter

from signals.events import Event
from signals.flags import Flag, SecurityAlert
from signals.incidents import Incident


def json_schema(which: Literal["event", "flag", "alert", "incident"] = "event") -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an input event, a flag, a security alert or an
    incident."""
    if which == "event":
        schema = TypeAdapter(Event).json_schema(mode="validation")
        schema["title"] = "frustration-signals event"
    elif which == "flag":
        schema = Flag.model_json_schema(mode="serialization")
    elif which == "alert":
        schema = SecurityAlert.model_json_schema(mode="serialization")
    else:
        schema = Incident.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema

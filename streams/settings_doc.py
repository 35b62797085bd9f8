"""The README's settings table, generated from the settings models so it cannot drift."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from detectors.config import DetectionConfig
from streams.settings import Settings


def _default(value: Any) -> str:
    if isinstance(value, tuple):
        return ", ".join(f"`{v}`" for v in value) if value else "(none)"
    if value is None:
        return "(none)"
    return f"`{value}`"


def _rows(model: type[BaseModel], env_prefix: str) -> list[str]:
    rows = []
    for name, info in model.model_fields.items():
        if name == "detection":
            continue
        default = info.get_default(call_default_factory=True)
        env = f"{env_prefix}{name.upper()}"
        rows.append(f"| `{env}` | {_default(default)} | {info.description or ''} |")
    return rows


def settings_markdown() -> str:
    """Every setting: environment variable, default, meaning."""
    head = ["| environment variable | default | meaning |", "|---|---|---|"]
    service = _rows(Settings, "FRUSTRATION_")
    detection = _rows(DetectionConfig, "FRUSTRATION_DETECTION__")
    lines = ["### Service and runner settings", "", *head, *service, ""]
    lines += ["### Detector thresholds", "", *head, *detection]
    return "\n".join(lines)

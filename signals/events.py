"""The input events: what a platform sends us, as frozen pydantic models.

Each event is one JSON object (a line of NDJSON, a Kafka message value, an element of an HTTP
batch), discriminated by `type`. Only metadata is modelled: free text a person wrote (`text`,
`message`, `body`, `content`, ...) is not a field of any model, so it is dropped at parse time and
never stored, logged or forwarded. Unknown fields are ignored.

`ts` is event time: RFC 3339 with an offset, or integer epoch milliseconds. Models store it as
integer epoch milliseconds (`ts`); `MIN_TS_MS`/`MAX_TS_MS` bound what is plausible.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

#: 2000-01-01T00:00:00Z: anything earlier is a clock or unit error (e.g. epoch seconds).
MIN_TS_MS = 946_684_800_000
#: 2100-01-01T00:00:00Z: anything later is a unit error (e.g. epoch microseconds).
MAX_TS_MS = 4_102_444_800_000


def _to_epoch_ms(value: int | datetime) -> int:
    ms = value if isinstance(value, int) else int(value.timestamp() * 1000)
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise PydanticCustomError("absurd_ts", "ts is outside 2000-01-01 .. 2100-01-01")
    return ms


def _path_only(page: str) -> str:
    # A query string or fragment can carry tokens, e-mail addresses or search terms: keep the path.
    if "?" in page or "#" in page:
        parts = urlsplit(page)
        return parts.path or "/"
    return page


def _rfc3339_text(value: object) -> object:
    # pydantic would read "1795255200250" as a time; the wire format says RFC 3339 or an integer.
    if not isinstance(value, str) or ("T" not in value and "t" not in value):
        raise PydanticCustomError("datetime_type", "ts must be RFC 3339 text or integer epoch ms")
    return value


if TYPE_CHECKING:
    EpochMs = int  # what the models hold after validation
else:
    EpochMs = Annotated[
        Annotated[int, Field(strict=True)]
        | Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)],
        AfterValidator(_to_epoch_ms),
    ]
ShortText = Annotated[str, Field(max_length=256)]


class _EventBase(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    user_id: Annotated[str, Field(min_length=1, max_length=256)]
    ts: Annotated[
        EpochMs,
        Field(
            description="Event time: RFC 3339 with offset (e.g. 2026-11-21T10:00:00.250Z) "
            "or integer epoch milliseconds; stored as epoch ms.",
            json_schema_extra={
                "anyOf": [
                    {"type": "integer", "minimum": MIN_TS_MS, "maximum": MAX_TS_MS - 1},
                    {"type": "string", "format": "date-time"},
                ]
            },
        ),
    ]
    session_id: ShortText | None = None
    event_id: Annotated[
        str | None,
        Field(max_length=256, description="An event_id seen again is processed once."),
    ] = None


class ClickEvent(_EventBase):
    """A click on a page control."""

    type: Literal["click"]
    target: Annotated[
        str | None, Field(max_length=512, description="CSS selector or stable element id")
    ] = None
    x: float | None = Field(default=None, allow_inf_nan=False, description="page x, px")
    y: float | None = Field(default=None, allow_inf_nan=False, description="page y, px")
    page: Annotated[
        str | None,
        Field(max_length=2048, description="Page path; a query string or fragment is cut off."),
        AfterValidator(lambda p: p if p is None else _path_only(p)),
    ] = None
    element: Annotated[str | None, Field(max_length=64, description="tag name, e.g. button")] = None
    label: Annotated[
        str | None, Field(max_length=256, description="the control's visible text or aria-label")
    ] = None
    role: Annotated[str | None, Field(max_length=64, description="ARIA role")] = None
    detail: Annotated[int | None, Field(ge=0, description="MouseEvent.detail")] = None
    input_type: Annotated[
        str | None, Field(max_length=32, description="type attribute of an <input>")
    ] = None


class LoginEvent(_EventBase):
    """One login attempt of an account."""

    type: Literal["login"]
    outcome: Literal["success", "failure"]
    reason: Annotated[
        str | None, Field(max_length=64, description="failure reason code, e.g. bad_password")
    ] = None
    ip: Annotated[str | None, Field(max_length=64, description="source IP address")] = None
    device_id: ShortText | None = None


class ChatEvent(_EventBase):
    """One step of a support or therapy chat. `user_id` is always the client's, also for agent
    messages; `sender` says who wrote."""

    type: Literal["chat"]
    chat_id: Annotated[str, Field(min_length=1, max_length=256)]
    action: Literal["start", "message", "end"]
    sender: Literal["user", "agent"] | None = Field(
        default=None, description="who wrote the message (required for action=message)"
    )
    ended_by: Literal["user", "agent", "system", "timeout"] | None = Field(
        default=None, description="who ended the chat (for action=end)"
    )
    channel: Annotated[
        str | None, Field(max_length=64, description="chat queue or channel, e.g. billing")
    ] = None

    @model_validator(mode="after")
    def _message_has_sender(self) -> ChatEvent:
        if self.action == "message" and self.sender is None:
            raise PydanticCustomError("missing", "a chat message needs a sender")
        return self


Event = Annotated[ClickEvent | LoginEvent | ChatEvent, Field(discriminator="type")]
EVENT_TYPES: tuple[str, ...] = ("click", "login", "chat")

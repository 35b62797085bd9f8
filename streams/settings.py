"""All settings, with their defaults, overridable by environment variables.

`FRUSTRATION_<FIELD>` sets a top-level field, `FRUSTRATION_DETECTION__<FIELD>` a detector
threshold (see `detectors.config.DetectionConfig`), e.g.::

    FRUSTRATION_PORT=8800 FRUSTRATION_DETECTION__RAGE_MIN_CLICKS=8 frustration serve

Command-line options override both. `frustration settings` prints every setting and its value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from detectors.config import DetectionConfig
from signals.wire import DEFAULT_MAX_EVENT_BYTES

#: The webhook event types an endpoint can subscribe to.
WEBHOOK_EVENT_TYPES: tuple[str, ...] = (
    "flag.opened",
    "flag.escalated",
    "flag.resolved",
    "incident.opened",
    "incident.updated",
    "incident.closed",
    "security_alert.raised",
)
#: What each body shape can carry (a helpdesk ticket is made once; Slack gets the bulk items).
WEBHOOK_SHAPE_TYPES: dict[str, tuple[str, ...]] = {
    "standard": WEBHOOK_EVENT_TYPES,
    "zendesk": ("flag.opened", "incident.opened"),
    "slack": ("incident.opened", "incident.updated", "incident.closed", "security_alert.raised"),
}


class WebhookEndpoint(BaseModel):
    """One webhook receiver: where, its Standard Webhooks secret, the event types it wants, and
    the body shape (`standard`: the public JSON in a Standard Webhooks envelope; `zendesk`: a
    Zendesk ticket; `slack`: a Slack incoming-webhook message)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str = Field(pattern=r"^https?://")
    secret: SecretStr = Field(description="whsec_<base64 key>, as Standard Webhooks prescribes")
    events: tuple[str, ...] = WEBHOOK_EVENT_TYPES
    shape: Literal["standard", "zendesk", "slack"] = "standard"
    authorization: SecretStr | None = Field(
        None, description="Authorization header to send (e.g. Zendesk's Basic API token)"
    )

    @model_validator(mode="after")
    def _check(self) -> WebhookEndpoint:
        unknown = [e for e in self.events if e not in WEBHOOK_EVENT_TYPES]
        if unknown:
            raise ValueError(f"unknown event types {unknown}; one of {WEBHOOK_EVENT_TYPES}")
        allowed = WEBHOOK_SHAPE_TYPES[self.shape]
        if self.shape != "standard":
            wrong = [e for e in self.events if e not in allowed]
            if wrong:
                raise ValueError(f"shape {self.shape} carries only {allowed}, not {wrong}")
        if not self.secret.get_secret_value().startswith("whsec_"):
            raise ValueError("secret must start with whsec_ (Standard Webhooks)")
        return self


class Settings(BaseSettings):
    """Settings of every runner. Frozen: build a new one to change anything."""

    model_config = SettingsConfigDict(
        env_prefix="FRUSTRATION_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    detection: DetectionConfig = Field(
        default_factory=DetectionConfig, description="Detector thresholds (see below)."
    )
    max_event_bytes: int = Field(
        DEFAULT_MAX_EVENT_BYTES, gt=0, description="Largest accepted event (bytes of JSON)."
    )

    # -- embedded service (`frustration serve`) ---------------------------------------------------
    host: str = Field("127.0.0.1", description="Address `serve` binds to.")
    port: int = Field(8700, ge=0, le=65535, description="Port `serve` listens on.")
    api_key: SecretStr | None = Field(
        None,
        description="Key required on POST /v1/events (Bearer or X-Api-Key). Required to bind to "
        "a non-loopback address.",
    )
    queue_token: SecretStr | None = Field(
        None,
        description="Bearer token for the support-queue API and pages (none: open on loopback).",
    )
    db_path: Path = Field(Path("data/frustration.db"), description="Support-queue SQLite database.")
    checkpoint_path: Path = Field(
        Path("data/detector-state.bin"), description="Detector state checkpoint file."
    )
    checkpoint_interval_s: float = Field(
        30.0, gt=0, description="Seconds between detector-state checkpoints."
    )
    checkpoint_every_events: int = Field(
        100_000,
        gt=0,
        description="Also checkpoint after this many accepted events (the journal behind a "
        "checkpoint is truncated, so this bounds the journal and the replay at start).",
    )
    journal: bool = Field(
        True,
        description="Append every accepted batch to the ingest journal before answering 202, and "
        "replay it after the checkpoint at start (off: a crash loses what came after the last "
        "checkpoint).",
    )
    journal_path: Path | None = Field(
        None,
        description="Ingest journal (SQLite, WAL); default: the checkpoint path + `.journal`.",
    )
    journal_sync: Literal["full", "normal"] = Field(
        "full",
        description="`full`: fsync the journal at every accepted POST (survives a power cut); "
        "`normal`: survives a crash of the process, not of the machine.",
    )
    max_items_listed: int = Field(
        20,
        ge=0,
        description="Rejected items listed in an ingest response (the rest are counted by reason).",
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest accepted POST body.")
    max_clock_skew_s: float = Field(
        600.0,
        gt=0,
        description="Events dated further than this ahead of the service's clock are rejected "
        "(absurd_ts), so one wrong client clock cannot make everyone else's events late.",
    )
    cors_origins: tuple[str, ...] = Field(
        (),
        description="Origins (scheme://host[:port]) of the sites whose pages send events with the "
        "collector; ingest answers CORS for these only. Empty: pages on this machine only "
        "(localhost, 127.0.0.1, [::1], any port).",
    )
    keepalive_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Idle keep-alive HTTP connections are closed after this many seconds.",
    )
    trusted_proxies: tuple[str, ...] = Field(
        (),
        description="Addresses or networks (CIDR) of an authenticating reverse proxy whose "
        "`proxy_user_header` names the agent. Empty: the header is never trusted.",
    )
    proxy_user_header: str = Field(
        "X-Forwarded-Email",
        description="Header that carries the signed-in agent, trusted only from trusted_proxies.",
    )
    queue_refresh_s: float = Field(
        10.0, gt=0, description="Seconds between live updates of the /queue list."
    )
    incident_update_interval_s: float = Field(
        7200.0,
        gt=0,
        description="An open incident's clients get a proactive update at least this often "
        "(seconds); the queue shows when the next one is due and counts overdue ones.",
    )
    messages_path: Path | None = Field(
        None,
        description="The platform's own suggested-message templates (TOML, same keys as "
        "streams/queue/messages.toml). None: the built-in file.",
    )
    release_interval_s: float = Field(
        0.1,
        gt=0,
        description="How often `serve` moves quiet clients' event time on with the wall clock "
        "(releasing their buffered events a lateness after arrival, firing due login deadlines).",
    )
    idle_advance_s: float = Field(
        2.0,
        gt=0,
        description="When no event at all arrives for this many seconds (a worker: on its "
        "partition, with nothing unread), back-fill clients (dated more than 10 min from the wall "
        "clock) have everything they sent processed and their deadlines fired, as a replay's end "
        "of input; in the Kafka queue sink, when no flag arrives for this long, the incident "
        "tracker's event time moves on.",
    )

    # -- Kafka runner (`frustration worker`) ------------------------------------------------------
    broker: str = Field("kafka://127.0.0.1:9092", description="Kafka bootstrap URL.")
    events_topic: str = Field("frustration.events", description="Input events, keyed by user_id.")
    flags_topic: str = Field("frustration.flags", description="Flags, keyed by user_id.")
    alerts_topic: str = Field("frustration.alerts", description="Security alerts.")
    dead_letter_topic: str = Field(
        "frustration.dead-letter", description="Bad messages with their reason."
    )
    incidents_topic: str = Field("frustration.incidents", description="Incidents.")
    topic_partitions: int = Field(8, ge=1, description="Partitions of topics created when missing.")
    topic_replication: int = Field(
        1,
        ge=1,
        description="Replication factor of topics created when missing (at most the number of "
        "brokers; 1 for a single broker).",
    )
    worker_web_host: str = Field(
        "127.0.0.1", description="Address the worker's web/metrics port binds to."
    )
    worker_web_port: int = Field(6066, ge=0, le=65535, description="Worker web/metrics port.")
    worker_data_dir: Path = Field(Path("data/worker"), description="Worker data directory.")
    table_store: str = Field(
        "memory://", description="faust table store: memory:// or rocksdb:// (rocksdict)."
    )
    worker_app_id: str = Field(
        "frustration-signals",
        description="faust app id: the workers' consumer groups (<app id>, and <app id>-detect "
        "for the detect stage) and the prefix of their internal topics (the by-user events "
        "topic, the user-state changelog).",
    )
    worker_checkpoint_interval_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between detector-state writes to the user-state changelog, per "
        "partition. Input offsets are committed only up to the last write, so a killed worker "
        "re-reads at most this much.",
    )
    worker_hot_path: Literal["batch"] = Field(
        "batch",
        description="How a worker reads the events topic: batch (aiokafka getmany(), one engine "
        "per assigned partition, per-user state in the <app id>-user-state changelog), the only "
        "value. The faust per-message path was retired in issue 16 (it gave a stuffing victim a "
        "flag replay does not give) and its code removed.",
    )
    worker_partition_skew_ms: int = Field(
        30_000,
        gt=0,
        description="Batch path: most event time a partition runs ahead of the slowest other "
        "partition, so the copies of failed logins it is sent arrive before its watermark. Well "
        "under login_confirm_ms; larger lets a back-fill run with fewer waits.",
    )

    # -- sources and webhooks (streams.sources, streams.queue.webhooks) ---------------------------
    source_mapping_path: Path | None = Field(
        None,
        description="Mapping file (TOML) of Segment / RudderStack / PostHog events to ours "
        "(none: the default shipped in streams/sources/default_mapping.toml).",
    )
    webhooks: tuple[WebhookEndpoint, ...] = Field(
        (),
        description='Webhook endpoints, as JSON: [{"name", "url", "secret": '
        '"whsec_...", "events": [...], "shape": standard|zendesk|slack}] (README).',
    )
    webhook_retry_base_s: float = Field(
        5.0, gt=0, description="Delay before the first retry of a failed webhook delivery."
    )
    webhook_retry_max_delay_s: float = Field(
        3600.0,
        gt=0,
        description="Longest delay between two delivery attempts (doubling stops there).",
    )
    webhook_max_attempts: int = Field(
        20,
        ge=1,
        description="Delivery attempts before a webhook message is dead-lettered (with the "
        "defaults about 10.4 hours of retries).",
    )
    webhook_retry_jitter: float = Field(
        0.2, ge=0, lt=1, description="Each retry delay is scaled by a random factor 1 ± this."
    )
    webhook_timeout_s: float = Field(10.0, gt=0, description="Timeout of one delivery attempt.")
    webhook_concurrency: int = Field(
        8, ge=1, description="Deliveries in flight at once (one per client at most, in order)."
    )
    webhook_poll_interval_s: float = Field(
        0.5, gt=0, description="How often the delivery loop looks for due webhook messages."
    )
    webhook_keep_delivered_s: float = Field(
        604800.0,
        gt=0,
        description="Delivered webhook messages are kept this long (for `webhooks replay`).",
    )

    @model_validator(mode="after")
    def _check_skew(self) -> Settings:
        if self.worker_partition_skew_ms >= self.detection.source_alert_hold_ms:
            # A copy that far behind could show an earlier crossing after its alert was raised.
            raise ValueError(
                "worker_partition_skew_ms must be below detection.source_alert_hold_ms"
            )
        return self

    @property
    def journal_file(self) -> Path:
        """Where the ingest journal is (beside the checkpoint unless set)."""
        if self.journal_path is not None:
            return self.journal_path
        return self.checkpoint_path.with_name(self.checkpoint_path.name + ".journal")

    @property
    def by_user_topic(self) -> str:
        """The workers' internal topic: events re-keyed and partitioned by user_id."""
        return f"{self.worker_app_id}-events-by-user"

    @property
    def user_state_topic(self) -> str:
        """The batch path's compacted changelog: per-user and per-partition detector state."""
        return f"{self.worker_app_id}-user-state"

"""Every threshold of the detector core, with its default and why.

`DetectionConfig` is a frozen pydantic model: the runners build it from `streams.settings.Settings`
(environment variables `FRUSTRATION_DETECTION__<FIELD>`), tests build it directly. Units are in the
names: `_ms` is milliseconds of event time, `_px` page pixels.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from signals.exceptions import ConfigurationError
from signals.flags import Severity

# Controls people click fast on purpose: steppers, carousels, pagers, calendars.
DEFAULT_STEPPER_LABELS = (
    "+", "-", "−", "–", "—", ">", "<", "›", "‹", "»", "«", "→", "←", "↑", "↓", "^", "v",
    "next", "previous", "prev", "back", "forward", "more", "less", "increase", "decrease",
    "increment", "decrement", "up", "down", "add", "remove", "plus", "minus", "zoom in", "zoom out",
)  # fmt: skip
DEFAULT_STEPPER_LABEL_PREFIXES = ("next ", "previous ", "prev ", "go to next", "go to previous")
DEFAULT_IGNORED_ROLES = (
    "spinbutton", "slider", "tab", "scrollbar", "switch", "checkbox", "radio", "option",
    "textbox", "searchbox", "combobox", "menuitemcheckbox", "menuitemradio",
)  # fmt: skip
DEFAULT_IGNORED_INPUT_TYPES = (
    "number", "range", "text", "email", "password", "search", "tel", "url", "date",
    "datetime-local", "month", "week", "time", "color", "checkbox", "radio", "file",
)  # fmt: skip
DEFAULT_IGNORED_ELEMENTS = ("canvas", "video", "audio", "select", "option", "textarea", "iframe")
# sshd, PAM, Keycloak, Auth0, Cognito and common web frameworks: the account named does not exist.
DEFAULT_NONEXISTENT_ACCOUNT_REASONS = (
    "invalid_user", "unknown_user", "no_such_user", "user_not_found", "unknown_account",
    "account_not_found", "invalid_username", "unknown_username", "user_does_not_exist",
)  # fmt: skip
# Reasons that say the credentials were wrong (not that the service failed).
DEFAULT_CREDENTIAL_REASONS = (
    "bad_password", "invalid_password", "wrong_password", "invalid_credentials", "bad_credentials",
)  # fmt: skip
DEFAULT_TEXT_ELEMENTS = (
    "p", "span", "h1", "h2", "h3", "h4", "h5", "h6", "li", "td", "th", "pre", "code",
    "blockquote", "em", "strong", "b", "i", "small", "dd", "dt", "figcaption", "caption",
    "article", "section", "body", "main",
)  # fmt: skip


class DetectionConfig(BaseModel):
    """Thresholds of the three detectors, the scorer and event-time handling."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- event time -------------------------------------------------------------------------------
    allowed_lateness_ms: int = Field(
        250,
        ge=0,
        description="How far out of order one client's events may arrive (in that client's own "
        "event time) and still count exactly: its reorder allowance. Each flag waits about this "
        "long, twice (the client's buffer, then the incident tracker's shared clock).",
    )
    user_quiet_ms: int = Field(
        300_000,
        ge=0,
        description="A client whose newest event is this far behind the shared clock is quiet: "
        "its time is moved up to the shared clock less this (its event ids can then be "
        "forgotten). A client clock slower than this sees its own events late.",
    )
    follow_shared_clock: bool = Field(
        True,
        description="A client's held events (never past its newest) and due login deadlines are "
        "processed once the shared clock is a lateness past them, whatever the client's own "
        "clock says: what moves quiet clients in a replay, and why their flags reach the "
        "incident tracker in time. Off: only a client's own events, the wall clock (service) "
        "and user_quiet_ms move it.",
    )
    shared_clock_clients: int = Field(
        31,
        ge=1,
        description="The shared clock (sweeps, incident tracker) is the median watermark of this "
        "many most recent distinct clients: one client with a wrong clock cannot move it.",
    )
    dedup_window_ms: int = Field(
        600_000, ge=0, description="How long an event_id is remembered to drop repeats."
    )
    user_idle_ttl_ms: int = Field(
        7_200_000,
        gt=0,
        description="Detector state of a user idle this long is forgotten (open flags are kept "
        "until their cooldown ends). Must exceed every detector window.",
    )

    # -- rage clicks ------------------------------------------------------------------------------
    rage_min_clicks: int = Field(
        6, ge=3, description="Clicks on one control, each gap within rage_max_gap_ms, that flag."
    )
    rage_max_gap_ms: int = Field(
        600, gt=0, description="Longest gap between two clicks of one burst."
    )
    rage_radius_px: float = Field(
        30.0, gt=0, description="Clicks without a target within this distance are one control."
    )
    rage_untargeted_min_clicks: int = Field(
        18,
        ge=3,
        description="Clicks on one spot without a target (x/y only), each gap within "
        "rage_max_gap_ms, that make a (weak) signal: three times rage_min_clicks, as people "
        "click scroll arrows and spin boxes fast all the time.",
    )
    rage_untargeted_strength: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Weight of a rage-click signal from clicks without a target (x/y only). 0: "
        "reported (metrics, outbox) but never part of a flag, as a third of real office sessions "
        "have such a burst; 0.5: corroborates a signal of another kind. Below 1, so it never "
        "flags alone.",
    )
    rage_burst_min_clicks: int = Field(
        4, ge=2, description="Clicks that make a shorter burst for the repeated-bursts rule."
    )
    rage_bursts_required: int = Field(
        3, ge=2, description="Shorter bursts on one control within rage_bursts_window_ms that flag."
    )
    rage_bursts_window_ms: int = Field(
        120_000, gt=0, description="Window of the repeated-bursts rule."
    )
    rage_ignored_labels: tuple[str, ...] = Field(
        DEFAULT_STEPPER_LABELS,
        description="Control labels (lower-cased, trimmed) clicked fast on purpose: never rage.",
    )
    rage_ignored_label_prefixes: tuple[str, ...] = Field(
        DEFAULT_STEPPER_LABEL_PREFIXES, description="Label prefixes treated like the labels above."
    )
    rage_ignored_roles: tuple[str, ...] = Field(
        DEFAULT_IGNORED_ROLES, description="ARIA roles whose controls are never rage-clicked."
    )
    rage_ignored_input_types: tuple[str, ...] = Field(
        DEFAULT_IGNORED_INPUT_TYPES, description="<input type> values never counted."
    )
    rage_ignored_elements: tuple[str, ...] = Field(
        DEFAULT_IGNORED_ELEMENTS, description="Elements never counted (media, canvas, fields)."
    )
    rage_text_elements: tuple[str, ...] = Field(
        DEFAULT_TEXT_ELEMENTS,
        description="Text elements: a burst on one counts only once MouseEvent.detail passes 3, "
        "so double- and triple-click selection never flags.",
    )

    # -- failed logins ----------------------------------------------------------------------------
    login_min_failures: int = Field(
        5, ge=2, description="Failed attempts of one account within login_window_ms that flag."
    )
    login_weak_failures: int = Field(
        3, ge=1, description="Failed attempts that make a weak signal (needs corroboration)."
    )
    login_window_ms: int = Field(600_000, gt=0, description="Window for counting failures.")
    login_merge_gap_ms: int = Field(
        1_000, ge=0, description="Failures closer than this are one attempt (double submit)."
    )
    login_confirm_ms: int = Field(
        60_000,
        ge=0,
        description="Wait this long after the failure that reaches login_min_failures for a "
        "success before signalling; a success in that time clears them.",
    )
    login_giveup_ms: int = Field(
        300_000,
        gt=0,
        description="After login_weak_failures attempts, this long without a success or another "
        "attempt is a weak signal (the client gave up).",
    )

    login_nonexistent_account_reasons: tuple[str, ...] = Field(
        DEFAULT_NONEXISTENT_ACCOUNT_REASONS,
        description="Failure reasons saying the account does not exist: nobody to contact, so "
        "they never count towards outreach (they still count as an IP's failures).",
    )
    login_max_source_ips: int = Field(
        2,
        ge=1,
        description="Attempts of one account from more distinct IPs than this (and not all from "
        "one device) are not one person locked out but tries spread over many sources.",
    )
    login_targeted_hold_ms: int = Field(
        3_600_000,
        ge=0,
        description="An account an attacking IP failed for is being attacked, not locked out: its "
        "failures from any source do not count for this long after the attacker's last one.",
    )

    # -- brute force (detectors/brute_force.py) ---------------------------------------------------
    brute_force_window_ms: int = Field(
        300_000, gt=0, description="Window in which one IP's failures on one account are judged."
    )
    brute_force_min_failures: int = Field(
        20,
        ge=2,
        description="Failures of one account from one IP within brute_force_window_ms that make "
        "it an attack (a person locked out stops after a handful).",
    )
    brute_force_suspect_failures: int = Field(
        10,
        ge=1,
        description="An IP with this many failures on one account is undecided: failed logins "
        "from it are judged only once its brute-force window has passed.",
    )
    brute_force_pace_attempts: int = Field(
        5,
        ge=3,
        description="Attempts (failures login_merge_gap_ms apart or more) of one account from one "
        "IP whose gaps are judged for machine pace.",
    )
    brute_force_max_median_gap_ms: int = Field(
        3_000,
        ge=0,
        description="Machine pace: the median gap of the last brute_force_pace_attempts attempts "
        "below this (a person needs longer to read the error and retype a password).",
    )
    brute_force_rhythm_attempts: int = Field(
        6,
        ge=3,
        description="Attempts of one account from one IP whose gaps are judged for a machine's "
        "even rhythm (brute_force_rhythm_max_jitter_ms).",
    )
    brute_force_rhythm_max_jitter_ms: int = Field(
        1_000,
        ge=0,
        description="Machine rhythm: the last brute_force_rhythm_attempts attempts with every "
        "gap within this of the others, at any pace (a person is never that regular; sshd logs "
        "have whole seconds, so 1 s is the finest a log can tell).",
    )
    brute_force_parallel_failures: int = Field(
        4,
        ge=2,
        description="Failures of one account from one IP within brute_force_parallel_ms: "
        "parallel connections (a double or triple submit is 2 or 3).",
    )
    brute_force_parallel_ms: int = Field(
        1_000, gt=0, description="Window of the parallel-connections rule."
    )
    brute_force_hold_ms: int = Field(
        3_600_000,
        gt=0,
        description="How long after its last failure a brute-forcing IP stays marked; its "
        "failures never count towards an outreach flag.",
    )

    # -- credential stuffing ----------------------------------------------------------------------
    stuffing_min_accounts: int = Field(
        15, ge=2, description="Distinct accounts failing from one IP that make it an attack."
    )
    stuffing_min_unknown_accounts: int = Field(
        5,
        ge=2,
        description="Distinct accounts that do not exist (login_nonexistent_account_reasons) "
        "failing from one IP within stuffing_window_ms that make it an attack: a person "
        "mistypes their own user name once or twice, a scanner walks a list of names.",
    )
    stuffing_window_ms: int = Field(300_000, gt=0, description="Window for counting accounts.")
    stuffing_suspect_accounts: int = Field(
        3,
        ge=2,
        description="An IP failing for this many accounts is undecided: failed logins from it are "
        "judged only once its stuffing window has passed.",
    )
    stuffing_hold_ms: int = Field(
        3_600_000,
        gt=0,
        description="How long after its last failure an attacking IP stays marked; its failures "
        "never count towards an outreach flag.",
    )

    source_alert_hold_ms: int = Field(
        60_000,
        gt=0,
        description="How long (the IP's event time) a credential-stuffing or account-scan alert "
        "is held before it is raised, so that a failure arriving out of order (another client's "
        "batch, a Kafka copy from a partition up to worker_partition_skew_ms behind) still gives "
        "the alert in-order processing gives, not a second one. Victims are left out at once.",
    )

    # -- distributed credential stuffing (detectors/distributed_stuffing.py) -----------------------
    distributed_stuffing_reasons: tuple[str, ...] = Field(
        DEFAULT_CREDENTIAL_REASONS,
        description="Failure reasons of wrong credentials that a surge is counted from (with "
        "login_nonexistent_account_reasons); service failures such as service_unavailable are "
        "outages, never counted.",
    )
    distributed_stuffing_window_ms: int = Field(
        600_000, gt=0, description="Window in which the platform's credential failures are counted."
    )
    distributed_stuffing_min_accounts: int = Field(
        100,
        ge=2,
        description="Distinct accounts with credential failures within the window that can make "
        "a distributed attack (when the other conditions hold too).",
    )
    distributed_stuffing_min_ips: int = Field(
        20,
        ge=1,
        description="Distinct source IPs the failures must come from (fewer: the per-IP rules "
        "judge them).",
    )
    distributed_stuffing_surge_factor: float = Field(
        5.0,
        ge=1,
        description="The window's distinct accounts must also reach this multiple of their usual "
        "number, so a large platform's ordinary typos are never an attack.",
    )
    distributed_stuffing_max_failures_per_account: float = Field(
        2.0,
        gt=0,
        description="Most failures per account on average: attackers try an account once or "
        "twice and move on, people (and an outage's clients) retry.",
    )
    distributed_stuffing_bucket_ms: int = Field(
        60_000, gt=0, description="The usual number is sampled at the end of each bucket."
    )
    distributed_stuffing_half_life_ms: int = Field(
        3_600_000,
        gt=0,
        description="Half-life of the usual number (exponentially weighted mean; the first "
        "window only sets it; frozen during an attack).",
    )
    distributed_stuffing_hold_ms: int = Field(
        600_000,
        ge=0,
        description="How long after the surge an attack stays on: failures from an IP that "
        "failed for two or more accounts do not count towards outreach meanwhile.",
    )

    # -- abrupt chat endings ----------------------------------------------------------------------
    chat_min_wait_ms: int = Field(
        120_000,
        gt=0,
        description="A chat ended by the client, the system or a timeout while the client has "
        "waited this long for any agent message flags.",
    )
    chat_weak_wait_ms: int = Field(
        60_000, gt=0, description="Waits from this long make a weak signal."
    )
    chat_followup_min_messages: int = Field(
        3,
        ge=1,
        description="Once an agent has answered, the client must have sent this many messages "
        "with no reply before leaving to flag: one or two are a last word (thanks, ok).",
    )
    chat_followup_min_wait_ms: int = Field(
        600_000,
        gt=0,
        description="Once an agent has answered, the client must also have waited this long "
        "since the first unanswered follow-up to flag.",
    )
    chat_departure_gap_ms: int = Field(
        1_000,
        ge=0,
        description="Ends by the same party within this long after an end that signalled are "
        "one departure (a client leaving with several chats open): one signal, not one per chat.",
    )
    chat_max_open_per_user: int = Field(
        4, ge=1, description="Open chats remembered per user (the oldest is forgotten)."
    )

    # -- scoring ----------------------------------------------------------------------------------
    score_half_life_ms: int = Field(
        600_000, gt=0, description="A signal's contribution halves every this much event time."
    )
    flag_threshold: float = Field(1.0, gt=0, description="Score at which a user is flagged.")
    weak_kind_cap: float = Field(
        0.5,
        ge=0,
        description="Most a kind with only weak signals adds, so weak signals of one kind never "
        "flag alone but two kinds together can.",
    )
    corroboration_factor: float = Field(
        1.5, ge=1, description="Score multiplier when signals of two or more kinds are present."
    )
    severity_medium: float = Field(1.5, description="Score from which severity is medium.")
    severity_high: float = Field(3.0, description="Score from which severity is high.")
    severity_critical: float = Field(5.0, description="Score from which severity is critical.")
    flag_cooldown_ms: int = Field(
        86_400_000,
        gt=0,
        description="A flag stays open (later signals join it) until this long passes without a "
        "signal; only then can the user get a new flag_id.",
    )
    flag_renewal_ms: int = Field(
        3_600_000,
        gt=0,
        description="A signal this long after the flag's last emission is new frustration: the "
        "flag is re-emitted one severity higher.",
    )
    max_signals_per_flag: int = Field(
        20, ge=1, description="Most recent signals kept as a flag's evidence."
    )

    # -- incidents (detectors/incidents.py) -------------------------------------------------------
    incident_window_ms: int = Field(
        300_000,
        gt=0,
        description="Window in which distinct clients flagged for one cause are counted.",
    )
    incident_min_users: int = Field(
        25,
        ge=2,
        description="Distinct clients flagged for one cause within incident_window_ms that open "
        "an incident (when also incident_surge_factor times the cause's baseline).",
    )
    incident_surge_factor: float = Field(
        5.0,
        ge=1,
        description="The window count must also reach this multiple of the cause's baseline, so a "
        "busy cause opens an incident only when it surges, not when it is merely busy.",
    )
    incident_bucket_ms: int = Field(
        60_000,
        gt=0,
        description="The baseline is sampled, and an open incident judged for closing, at the end "
        "of each bucket of this much event time.",
    )
    incident_baseline_half_life_ms: int = Field(
        3_600_000,
        gt=0,
        description="Half-life of the baseline (exponentially weighted mean of the window count "
        "per cause); frozen while the cause has an open incident.",
    )
    incident_prior_per_1000_active: float = Field(
        1.0,
        ge=0,
        description="What a fresh tracker assumes each cause was before it started watching, in "
        "distinct flagged clients per incident_window_ms per 1000 active clients (whole "
        "thousands); it weighs in the baseline as that time would (halved every "
        "incident_baseline_half_life_ms watched), so a large platform's busy cause is not a "
        "surge from zero. 1 is above the busiest cause of the simulator (0.4).",
    )
    incident_close_users: int = Field(
        5,
        ge=0,
        description="Hysteresis: an incident closes once the window count has stayed at or below "
        "this (or incident_close_factor times the baseline, if higher) for "
        "incident_close_quiet_ms.",
    )
    incident_close_factor: float = Field(
        2.0, ge=0, description="Baseline multiple below which an incident's cause counts as quiet."
    )
    incident_close_quiet_ms: int = Field(
        300_000, ge=0, description="How long a cause must stay quiet before its incident closes."
    )
    incident_individual_severity: Severity = Field(
        "high",
        description="Flags of this severity or above stay in individual outreach even when an "
        "incident explains their cause (as do flags with signals of another cause).",
    )
    incident_lateness_ms: int = Field(
        5_000,
        ge=0,
        description="How far out of order flags may reach the incident tracker (several engines "
        "feeding one tracker) and still be grouped exactly.",
    )
    incident_cause_ttl_ms: int = Field(
        21_600_000,
        gt=0,
        description="A cause with no flag for this long and no open incident is forgotten "
        "(baseline included), so memory stays bounded.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> DetectionConfig:
        if self.login_weak_failures >= self.login_min_failures:
            raise ConfigurationError("login_weak_failures must be below login_min_failures")
        if self.chat_weak_wait_ms >= self.chat_min_wait_ms:
            raise ConfigurationError("chat_weak_wait_ms must be below chat_min_wait_ms")
        if self.rage_untargeted_min_clicks < self.rage_min_clicks:
            raise ConfigurationError("rage_untargeted_min_clicks must be at least rage_min_clicks")
        if self.rage_burst_min_clicks >= self.rage_min_clicks:
            raise ConfigurationError("rage_burst_min_clicks must be below rage_min_clicks")
        if not self.severity_medium <= self.severity_high <= self.severity_critical:
            raise ConfigurationError("severity thresholds must rise: medium <= high <= critical")
        if self.flag_threshold > self.severity_medium:
            raise ConfigurationError("flag_threshold must not exceed severity_medium")
        longest_window = max(
            self.login_window_ms + self.login_confirm_ms + self.login_giveup_ms,
            self.rage_bursts_window_ms,
            self.stuffing_window_ms,
            self.brute_force_window_ms,
            self.login_targeted_hold_ms,
            self.allowed_lateness_ms,
        )
        if self.user_idle_ttl_ms <= longest_window:
            raise ConfigurationError("user_idle_ttl_ms must exceed every detector window")
        if self.brute_force_suspect_failures >= self.brute_force_min_failures:
            raise ConfigurationError(
                "brute_force_suspect_failures must be below brute_force_min_failures"
            )
        if self.dedup_window_ms < self.allowed_lateness_ms:
            raise ConfigurationError("dedup_window_ms must be at least allowed_lateness_ms")
        if self.incident_close_users >= self.incident_min_users:
            raise ConfigurationError("incident_close_users must be below incident_min_users")
        if self.incident_close_factor >= self.incident_surge_factor:
            raise ConfigurationError("incident_close_factor must be below incident_surge_factor")
        if self.incident_window_ms < self.incident_bucket_ms:
            raise ConfigurationError("incident_window_ms must be at least incident_bucket_ms")
        if self.incident_cause_ttl_ms <= self.incident_window_ms + self.incident_close_quiet_ms:
            raise ConfigurationError(
                "incident_cause_ttl_ms must exceed incident_window_ms + incident_close_quiet_ms"
            )
        return self

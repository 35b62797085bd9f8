"""A realistic labelled event stream, for `frustration simulate`, evaluation, demos and benchmarks.

Most users do ordinary things at human pace, including the benign look-alikes that fool simple
rage-click rules (double-clicks, triple-click text selection, steppers, carousels, calendar
chevrons, sliders, tabs, quick navigation, a control clicked three or four times in impatience,
one spot clicked fast with no target as real office sessions show),
typo'd logins that then succeed, chats answered in time, chats closed at once, answered clients
who say a last word and leave much later. A few percent are
in a frustration episode: a broken control hammered (in one long burst, or in several short ones),
a lock-out, a chat abandoned while waiting, or two weaker signs together. One attacker IP tries
credential stuffing against many accounts: those accounts are victims, not frustrated. Two
scanners brute-force one account each (one at sshd's machine pace, one slower but dozens of
times), and from 1000 users on a botnet of hundreds of IPs tries leaked credentials on many
accounts, most of which do not exist here, a few real ones from several IPs each: shapes seen in
real sshd logs; their victims are labelled look-alikes (`brute_force_victim`, `botnet_victim`).

Timing is drawn from distributions, not fixed at the thresholds: some episodes have a pause that
breaks the burst, or failures spread out too far, so they are honestly hard to catch. Arrival order
is event time plus a random network delay (so input is out of order across clients by up to a few
seconds), but one client's events travel as the browser collector sends them, in order on one
connection: a client's event overtakes only its events less than `CLIENT_REORDER_MS` older
(two batches in flight). A few events are delivered twice with the same
event_id.

The ground truth has one record per user: whether they were frustrated, and each episode's kind,
`start_ts` (its first event) and `evident_ts` (when an observer could tell: the first hammering
click, the fifth failed login, the chat's end).

An *outage* (`Outage`, `frustration simulate --outage login:service_unavailable`) adds, on top of
the ordinary traffic, a crowd of extra clients hit by one platform failure within a few minutes:
every login fails with the given reason, or one control does nothing. They are labelled with the
outage's cause key (`outage` in the truth), not as individually frustrated: the detectors flag
many of them correctly, and the point is that they reach the support queue as one incident.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from signals.flags import SignalKind

#: 2026-11-21T08:00:00Z
DEFAULT_START_MS = 1_795_248_000_000

Event = dict[str, Any]

# (page, target, label, element, role, x, y) of ordinary controls.
_CONTROLS: list[tuple[str, str, str, str, str | None, int, int]] = [
    ("/home", "#nav-sessions", "Sessions", "a", "link", 120, 40),
    ("/home", "#nav-messages", "Messages", "a", "link", 220, 40),
    ("/home", "#nav-billing", "Billing", "a", "link", 320, 40),
    ("/home", "#book-session", "Book a session", "button", "button", 400, 300),
    ("/sessions", "#join-session", "Join session", "button", "button", 600, 420),
    ("/sessions", "#reschedule", "Reschedule", "button", "button", 600, 480),
    ("/journal", "#save-entry", "Save", "button", "button", 700, 620),
    ("/journal", "#mood-great", "Great", "button", "button", 300, 200),
    ("/billing", "#pay", "Pay now", "button", "button", 520, 560),
    ("/billing", "#download-invoice", "Download invoice", "a", "link", 520, 640),
    ("/messages", "#send", "Send", "button", "button", 880, 700),
    ("/settings", "#save-settings", "Save changes", "button", "button", 640, 720),
]
# Controls that break during an episode (a click does nothing).
_BROKEN = [c for c in _CONTROLS if c[1] in ("#pay", "#join-session", "#save-entry", "#send")]
_TEXT = [
    ("/journal", "#entry-text", "p"),
    ("/home", "#welcome", "p"),
    ("/resources", "#art", "span"),
]
_STEPPERS: list[tuple[str, str, str, str, str | None, str | None]] = [
    # page, target, label, element, role, input_type
    ("/book", "#duration-plus", "+", "button", None, None),
    ("/book", "#duration-minus", "−", "button", None, None),
    ("/book", "#cal-next", "›", "button", None, None),
    ("/book", "#cal-prev", "Previous month", "button", None, None),
    ("/resources", "#carousel-next", "Next slide", "button", None, None),
    ("/journal", "#mood-scale", "", "input", "slider", "range"),
    ("/book", "#sessions-count", "", "input", "spinbutton", "number"),
]
_TABS = [("/settings", f"#tab-{n}", n.title(), "button", "tab") for n in ("profile", "privacy")]

#: One client's event may arrive before its earlier ones only if they are less than this older
#: (two collector batches in flight); within the default per-client allowed lateness.
CLIENT_REORDER_MS = 100


@dataclass(slots=True)
class Episode:
    kind: SignalKind
    start_ts: int
    evident_ts: int


@dataclass(slots=True)
class Truth:
    user_id: str
    frustrated: bool = False
    episodes: list[Episode] = field(default_factory=list)
    lookalikes: list[str] = field(default_factory=list)
    credential_stuffing_victim: bool = False
    outage: str | None = None  # cause key of the outage that hit this client

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "frustrated": self.frustrated,
            "episodes": [
                {"kind": e.kind, "start_ts": e.start_ts, "evident_ts": e.evident_ts}
                for e in self.episodes
            ],
            "lookalikes": self.lookalikes,
            "credential_stuffing_victim": self.credential_stuffing_victim,
            "outage": self.outage,
        }


@dataclass(frozen=True, slots=True)
class Outage:
    """One platform failure hitting `users` extra clients, whose first attempt falls within
    `duration_ms` from `start_ms` (default: a third into the simulated period).

    `kind` "login": every login in that time fails with reason `detail`; clients try 1-8 times at
    human pace, some come back later and get in. `kind` "click": the control with target `detail`
    does nothing; clients hammer it.
    """

    kind: Literal["login", "click"]
    detail: str
    users: int = 600
    duration_ms: int = 180_000
    start_ms: int | None = None

    @classmethod
    def parse(cls, spec: str, users: int = 600) -> Outage:
        """`login:<reason>` or `click:<target>`, e.g. login:service_unavailable, click:#pay."""
        kind, _, detail = spec.partition(":")
        if kind not in ("login", "click") or not detail:
            raise ValueError(f"outage {spec!r}: expected login:<reason> or click:<target>")
        return cls("login" if kind == "login" else "click", detail, users)

    def control(self) -> tuple[str, str, str, str, str | None, int, int]:
        for control in _CONTROLS:
            if control[1] == self.detail:
                return control
        return ("/", self.detail, "", "button", "button", 500, 300)

    @property
    def cause(self) -> str:
        """The cause key the incident tracker gives the flags of this outage."""
        if self.kind == "login":
            return f"failed_logins:{self.detail}"
        page, target, label = self.control()[:3]
        return f"rage_click:{page}|{target or label}"


@dataclass(slots=True)
class SimulatedStream:
    events: list[Event]  # in arrival order
    truth: list[Truth]

    def event_lines(self) -> Iterator[bytes]:
        for e in self.events:
            yield orjson.dumps(e)

    def truth_lines(self) -> Iterator[bytes]:
        for t in self.truth:
            yield orjson.dumps(t.to_json())


class _User:
    """Builds one user's events in event time."""

    def __init__(self, sim: Simulator, user_id: str, t: int) -> None:
        self.sim = sim
        self.rng = sim.rng
        self.user_id = user_id
        self.session_id = f"s-{user_id}"
        self.t = t
        octets = (64 + self.rng.randrange(64), self.rng.randrange(256), self.rng.randrange(1, 255))
        self.ip = "100.{}.{}.{}".format(*octets)
        self.device = f"d-{self.rng.randrange(1 << 30):08x}"
        self.truth = Truth(user_id)

    def wait(self, lo_ms: float, hi_ms: float) -> int:
        self.t += int(self.rng.uniform(lo_ms, hi_ms))
        return self.t

    def think(self) -> int:
        """A human pause between unrelated actions: median about 4 s, never under 1.5 s."""
        self.t += int(1_500 + self.rng.lognormvariate(7.6, 0.8))
        return self.t

    def emit(self, **fields: Any) -> None:
        self.sim.emit(self.user_id, self.session_id, self.t, fields)

    def click(
        self,
        control: tuple[str, str, str, str, str | None, int, int],
        detail: int = 1,
        jitter: int = 4,
    ) -> None:
        page, target, label, element, role, x, y = control
        fields: dict[str, Any] = {
            "type": "click",
            "page": page,
            "target": target,
            "element": element,
            "x": x + self.rng.randint(-jitter, jitter),
            "y": y + self.rng.randint(-jitter, jitter),
            "detail": detail,
        }
        if label:
            fields["label"] = label
        if role:
            fields["role"] = role
        self.emit(**fields)

    def login(self, outcome: str, reason: str | None = None, ip: str | None = None) -> None:
        fields: dict[str, Any] = {"type": "login", "outcome": outcome, "ip": ip or self.ip}
        fields["device_id"] = self.device
        if reason:
            fields["reason"] = reason
        self.emit(**fields)

    def chat(self, chat_id: str, action: str, **kw: Any) -> None:
        self.emit(type="chat", chat_id=chat_id, action=action, **kw)


class Simulator:
    """Generates a `SimulatedStream`. Same arguments, same stream."""

    def __init__(
        self,
        users: int,
        seed: int = 1,
        start_ms: int = DEFAULT_START_MS,
        duration_ms: int = 2 * 3_600_000,
        frustrated_share: float = 0.04,
        max_network_delay_ms: int = 3_000,
        duplicate_share: float = 0.005,
        outages: Sequence[Outage] = (),
    ) -> None:
        self.users = users
        self.rng = random.Random(seed)
        self.seed = seed
        self.start_ms = start_ms
        self.duration_ms = duration_ms
        self.frustrated_share = frustrated_share
        self.max_network_delay_ms = max_network_delay_ms
        self.duplicate_share = duplicate_share
        self.outages = tuple(outages)
        self._timed: list[tuple[int, int, Event]] = []
        self._n = 0

    def emit(self, user_id: str, session_id: str, ts: int, fields: dict[str, Any]) -> None:
        self._n += 1
        event = {"user_id": user_id, "ts": ts, "session_id": session_id}
        event["event_id"] = f"e{self.seed}-{self._n}"
        event.update(fields)
        delay = min(self.max_network_delay_ms, int(self.rng.expovariate(1 / 250)))
        self._timed.append((ts + delay, self._n, event))
        if self.rng.random() < self.duplicate_share:  # a client retry: same event_id, later
            self._timed.append((ts + delay + self.rng.randint(100, 2_000), self._n, event))

    def run(self) -> SimulatedStream:
        truths = []
        for i in range(self.users):
            user_id = f"u{self.seed}-{i:06d}"
            t0 = self.start_ms + self.rng.randrange(max(1, self.duration_ms - 1_800_000))
            truths.append(self._user(_User(self, user_id, t0)))
        self._credential_stuffing(truths)
        self._brute_force(truths)
        self._botnet(truths)
        for n, outage in enumerate(self.outages):
            self._outage(truths, n, outage)
        self._in_order_per_client()
        self._timed.sort(key=lambda item: (item[0], item[1]))
        return SimulatedStream([e for _, _, e in self._timed], truths)

    def _in_order_per_client(self) -> None:
        """A client's events queue behind its earlier ones (no random draw: the events and their
        times stay exactly as drawn, only arrival moves)."""
        by_client: dict[str, list[int]] = {}
        for index, (_, _, event) in enumerate(self._timed):
            by_client.setdefault(event["user_id"], []).append(index)
        timed = self._timed
        for indexes in by_client.values():
            indexes.sort(key=lambda i: (timed[i][2]["ts"], timed[i][0]))
            behind = 0  # events up to here are CLIENT_REORDER_MS or more older than the current
            queue_end = None  # latest arrival among them: the current one queues behind it
            for i in indexes:
                ts = timed[i][2]["ts"]
                while behind < len(indexes) and timed[indexes[behind]][2]["ts"] < (
                    ts - CLIENT_REORDER_MS
                ):
                    arrival = timed[indexes[behind]][0]
                    queue_end = arrival if queue_end is None else max(queue_end, arrival)
                    behind += 1
                arrival, n, event = timed[i]
                if queue_end is not None and arrival <= queue_end:
                    # Strictly after: at the same arrival the stream's order is by draw number,
                    # which may put this newer event before the older one it queues behind.
                    timed[i] = (queue_end + 1, n, event)

    # -- one user ---------------------------------------------------------------------------------
    def _user(self, u: _User) -> Truth:
        rng = self.rng
        roll = rng.random()
        episode = None
        if roll < self.frustrated_share:
            episode = rng.choices(
                ["rage", "bursts", "lockout", "abandoned", "weak_pair"], [40, 10, 22, 22, 6]
            )[0]
        if episode == "lockout":
            self._lockout(u)
        else:
            self._ordinary_login(u)
        actions = rng.randint(6, 40)
        episode_at = rng.randrange(actions) if episode in ("rage", "bursts", "abandoned") else -1
        for i in range(actions):
            u.think()
            if i == episode_at:
                {"rage": self._rage, "bursts": self._bursts, "abandoned": self._abandoned}[
                    episode  # type: ignore[index]
                ](u)
            else:
                self._ordinary_action(u)
        if episode == "weak_pair":
            self._weak_pair(u)
        u.truth.frustrated = bool(u.truth.episodes)
        return u.truth

    def _ordinary_action(self, u: _User) -> None:
        rng = self.rng
        kind = rng.choices(
            ["click", "double", "triple", "stepper", "tabs", "nav", "impatient", "chat", "quick",
             "spot"],
            [88, 2.5, 1.5, 2, 0.7, 1, 1.2, 2.5, 0.6, 0.8],
        )[0]  # fmt: skip
        if kind == "click":
            u.click(rng.choice(_CONTROLS))
        elif kind == "double":
            u.truth.lookalikes.append("double_click")
            control = rng.choice(_CONTROLS)
            u.click(control, detail=1)
            u.wait(90, 260)
            u.click(control, detail=2)
        elif kind == "triple":
            u.truth.lookalikes.append("triple_click_select")
            page, target, element = rng.choice(_TEXT)
            for _ in range(rng.choice([1, 1, 2, 3])):
                for d in (1, 2, 3):
                    u.emit(type="click", page=page, target=target, element=element,
                           x=300, y=250, detail=d)  # fmt: skip
                    u.wait(80, 200)
                u.wait(150, 1_500)
        elif kind == "stepper":
            u.truth.lookalikes.append("stepper")
            page, target, label, element, role, input_type = rng.choice(_STEPPERS)
            for i in range(rng.randint(4, 16)):
                fields: dict[str, Any] = {"type": "click", "page": page, "target": target}
                fields.update(element=element, x=500, y=300, detail=i + 1)
                if label:
                    fields["label"] = label
                if role:
                    fields["role"] = role
                if input_type:
                    fields["input_type"] = input_type
                u.emit(**fields)
                u.wait(110, 380)
        elif kind == "tabs":
            u.truth.lookalikes.append("tabs")
            for i in range(rng.randint(4, 9)):
                page, target, label, element, role = _TABS[i % 2]
                u.emit(type="click", page=page, target=target, label=label, element=element,
                       role=role, x=200 + 100 * (i % 2), y=120, detail=1)  # fmt: skip
                u.wait(150, 450)
        elif kind == "nav":
            u.truth.lookalikes.append("quick_navigation")
            for control in rng.sample(_CONTROLS, rng.randint(4, 7)):
                u.click(control)
                u.wait(250, 550)
        elif kind == "impatient":
            u.truth.lookalikes.append("three_or_four_clicks")
            control = rng.choice(_CONTROLS)
            for d in range(rng.randint(3, 4)):
                u.click(control, detail=d + 1)
                u.wait(150, 500)
        elif kind == "chat":
            self._ordinary_chat(u)
        elif kind == "spot":
            # As in real office sessions (Balabit): one spot clicked fast 6-40 times (a scroll
            # arrow, a spin box), sent by a source that gives x/y and no target. Bursts of 18+
            # make a weak signal, which must not flag these ordinary users alone.
            u.truth.lookalikes.append("untargeted_fast_clicks")
            x, y = rng.uniform(50, 1200), rng.uniform(50, 800)
            for _ in range(rng.randint(6, 40)):
                u.emit(
                    type="click", x=round(x + rng.uniform(-4, 4)), y=round(y + rng.uniform(-4, 4))
                )
                u.wait(90, 450)
        else:
            u.truth.lookalikes.append("chat_opened_and_closed")
            chat_id = f"c-{u.user_id}-{u.t}"
            u.chat(chat_id, "start")
            u.wait(1_000, 8_000)
            u.chat(chat_id, "end", ended_by="user")

    def _ordinary_login(self, u: _User) -> None:
        rng = self.rng
        r = rng.random()
        if r < 0.10:
            u.truth.lookalikes.append("typo_then_success")
            for _ in range(rng.randint(1, 2)):
                u.login("failure", "bad_password")
                u.wait(4_000, 20_000)
        elif r < 0.13:
            u.truth.lookalikes.append("forgot_then_success")
            for _ in range(rng.randint(3, 4)):
                u.login("failure", "bad_password")
                u.wait(8_000, 40_000)
        elif r < 0.15:
            u.truth.lookalikes.append("double_submit")
            u.login("failure", "bad_password")
            u.wait(150, 700)
            u.login("failure", "bad_password")
            u.wait(3_000, 9_000)
        u.login("success")

    def _ordinary_chat(self, u: _User) -> None:
        rng = self.rng
        chat_id = f"c-{u.user_id}-{u.t}"
        u.chat(chat_id, "start", channel="support")
        u.wait(2_000, 15_000)
        for _ in range(rng.randint(1, 4)):
            u.chat(chat_id, "message", sender="user")
            u.wait(5_000, 100_000)  # some answers come late, but come
            u.chat(chat_id, "message", sender="agent")
            u.wait(5_000, 60_000)
        r = rng.random()
        if r < 0.1:
            u.truth.lookalikes.append("left_after_short_wait")
            u.chat(chat_id, "message", sender="user")
            u.wait(5_000, 45_000)
            u.chat(chat_id, "end", ended_by="user")
        elif r < 0.25:
            # Real answered askers (issue 11): a last word or two ("thanks", "ok, I'll try that"),
            # then they leave 2-35 min later, or the chat times out.
            u.truth.lookalikes.append("answered_then_left")
            for _ in range(rng.randint(1, 2)):
                u.chat(chat_id, "message", sender="user")
                u.wait(3_000, 40_000)
            u.wait(120_000, 2_100_000)
            u.chat(chat_id, "end", ended_by=rng.choice(["user", "user", "timeout"]))
        else:
            u.chat(chat_id, "end", ended_by=rng.choice(["user", "agent", "agent"]))

    # -- frustration episodes ---------------------------------------------------------------------
    def _rage(self, u: _User) -> None:
        rng = self.rng
        control = rng.choice(_BROKEN)
        start = u.t
        u.truth.episodes.append(Episode("rage_click", start, start))
        detail = 0
        slow = rng.random() < 0.1  # some people hammer slowly: gaps around 0.5-0.9 s
        for _ in range(rng.randint(7, 24)):
            detail += 1
            u.click(control, detail=detail, jitter=8)
            gap = rng.uniform(480, 900) if slow else rng.lognormvariate(5.5, 0.45)
            detail = 0 if gap > 500 else detail
            u.wait(gap, gap)

    def _bursts(self, u: _User) -> None:
        rng = self.rng
        control = rng.choice(_BROKEN)
        u.truth.episodes.append(Episode("rage_click", u.t, u.t))
        for _ in range(rng.randint(3, 4)):
            for d in range(rng.randint(4, 5)):
                u.click(control, detail=d + 1, jitter=8)
                u.wait(120, 450)
            u.wait(3_000, 25_000)

    def _lockout(self, u: _User) -> None:
        rng = self.rng
        start = u.t
        evident = start
        for attempt in range(rng.randint(5, 9)):
            u.login("failure", rng.choice(["bad_password", "bad_password", "bad_otp"]))
            if attempt == 4:
                evident = u.t  # the fifth failure: from here an observer can tell
            u.wait(6_000, 75_000)
        u.truth.episodes.append(Episode("failed_logins", start, evident))
        u.think()

    def _abandoned(self, u: _User) -> None:
        rng = self.rng
        chat_id = f"c-{u.user_id}-{u.t}"
        u.chat(chat_id, "start", channel="support")
        start = u.wait(2_000, 10_000)
        if rng.random() < 0.4:
            # Answered once, then asked again and again with no reply (one or two messages after
            # an answer are a last word, see `_ordinary_chat`): left waiting 10-25 min.
            u.chat(chat_id, "message", sender="user")
            u.wait(10_000, 50_000)
            u.chat(chat_id, "message", sender="agent")
            start = u.wait(5_000, 30_000)
            for _ in range(rng.randint(3, 5)):
                u.chat(chat_id, "message", sender="user")
                u.wait(60_000, 240_000)
            u.t = max(u.t, start + int(rng.uniform(620_000, 1_500_000)))
        else:
            for _ in range(rng.randint(1, 4)):
                u.chat(chat_id, "message", sender="user")
                u.wait(20_000, 90_000)
            u.t = max(u.t, start + int(rng.uniform(150_000, 900_000)))
        u.chat(chat_id, "end", ended_by=rng.choices(["user", "timeout", "system"], [6, 3, 1])[0])
        u.truth.episodes.append(Episode("abrupt_chat_end", start, u.t))

    def _weak_pair(self, u: _User) -> None:
        """Three failed logins, then a chat left after 70-110 s: weak alone, clear together."""
        rng = self.rng
        u.think()
        start = u.t
        for _ in range(3):
            u.login("failure", "bad_password")
            u.wait(8_000, 30_000)
        u.wait(60_000, 120_000)
        chat_id = f"c-{u.user_id}-{u.t}"
        u.chat(chat_id, "start", channel="account")
        u.wait(1_000, 5_000)
        u.chat(chat_id, "message", sender="user")
        u.wait(70_000, 110_000)
        u.chat(chat_id, "end", ended_by="user")
        u.truth.episodes.append(Episode("failed_logins", start, u.t))
        u.truth.episodes.append(Episode("abrupt_chat_end", u.t, u.t))
        _ = rng

    def _credential_stuffing(self, truths: list[Truth]) -> None:
        """One IP trying leaked passwords on 30-40 accounts within four minutes; some accounts
        get five or six tries at human pace, which alone would look like a lock-out."""
        if self.users < 50:
            return
        rng = self.rng
        attacker_ip = "198.51.100.23"
        t = self.start_ms + self.duration_ms // 2
        victims = rng.sample(truths, rng.randint(30, 40))
        for victim in victims:
            if victim.frustrated:
                continue
            victim.credential_stuffing_victim = True
            tries = rng.choice([1, 1, 2, 5, 6])
            for _ in range(tries):
                t += rng.randint(1_200, 4_000)
                self.emit(victim.user_id, f"s-atk-{victim.user_id}", t,
                          {"type": "login", "outcome": "failure", "reason": "bad_password",
                           "ip": attacker_ip, "device_id": "d-attacker"})  # fmt: skip

    def _brute_force(self, truths: list[Truth]) -> None:
        """Two scanners, each hammering one real account: one retries every 2-3 s (as sshd
        scanners do), one every 5-12 s but 25-60 times."""
        if self.users < 50:
            return
        rng = self.rng
        quiet = [t for t in truths if not t.frustrated and not t.credential_stuffing_victim]
        for n, (ip, tries, lo, hi) in enumerate(
            [("203.0.113.66", (30, 150), 2_000, 3_000), ("203.0.113.67", (25, 60), 5_000, 12_000)]
        ):
            victim = rng.choice(quiet)
            quiet.remove(victim)
            victim.lookalikes.append("brute_force_victim")
            t = self.start_ms + self.duration_ms * (2 + n) // 5 + rng.randrange(300_000)
            for _ in range(rng.randint(*tries)):
                t += rng.randint(lo, hi)
                self.emit(victim.user_id, f"s-bf-{victim.user_id}", t,
                          {"type": "login", "outcome": "failure", "reason": "bad_password",
                           "ip": ip})  # fmt: skip
        self._slow_scanners(quiet)

    def _slow_scanners(self, quiet: list[Truth]) -> None:
        """Two scanners seen on real servers that stay under the pace and volume rules: a timer
        retrying one real account at an exact gap (3-40 s, whole seconds as sshd logs them), and
        one walking a list of user names that do not exist while retrying a real account three
        times per connection at a person's pace."""
        rng = self.rng
        timer, walker = rng.sample(quiet, 2)
        for victim, label in ((timer, "timer_scanner_victim"), (walker, "name_scanner_victim")):
            quiet.remove(victim)
            victim.lookalikes.append(label)
        t = self.start_ms + self.duration_ms // 4 + rng.randrange(300_000)
        gap = rng.randint(3, 40) * 1000
        for _ in range(rng.randint(6, 12)):
            t += gap
            self.emit(timer.user_id, f"s-tm-{timer.user_id}", t,
                      {"type": "login", "outcome": "failure", "reason": "bad_password",
                       "ip": "203.0.113.68"})  # fmt: skip
        t = self.start_ms + self.duration_ms * 3 // 4 + rng.randrange(300_000)
        names = iter(f"scan-{self.seed}-{n}" for n in range(100))
        for connection in range(rng.randint(5, 7)):
            t += rng.randint(60_000, 110_000)  # sshd allows 3 tries per connection
            for _ in range(3):
                t += rng.randint(4_000, 11_000)
                account = walker.user_id if connection % 2 == 0 else next(names)
                reason = "bad_password" if account == walker.user_id else "invalid_user"
                self.emit(account, f"s-ns-{account}", t,
                          {"type": "login", "outcome": "failure", "reason": reason,
                           "ip": "203.0.113.69"})  # fmt: skip

    def _botnet(self, truths: list[Truth]) -> None:
        """Hundreds of IPs within 8 minutes, each trying one or two accounts once or twice from
        a leaked list: a quarter of the users' number of accounts, 80 % of which do not exist
        here (invalid_user); each real account in it is tried from 2-5 IPs."""
        if self.users < 1000:
            return
        rng = self.rng
        start = self.start_ms + self.duration_ms * 2 // 3
        quiet = [
            t
            for t in truths
            if not t.frustrated and not t.credential_stuffing_victim and not t.lookalikes
        ]
        n_accounts = self.users // 4
        real = rng.sample(quiet, max(1, n_accounts // 5))
        attempts: list[tuple[str, str]] = []
        for victim in real:
            victim.lookalikes.append("botnet_victim")
            attempts += [(victim.user_id, "bad_password")] * rng.randint(2, 5)
        for i in range(n_accounts - len(real)):
            attempts += [(f"leaked-{self.seed}-{i:05d}", "invalid_user")] * rng.randint(1, 2)
        rng.shuffle(attempts)
        ips = [f"198.18.{rng.randrange(256)}.{rng.randrange(1, 255)}" for _ in range(len(attempts))]
        k = 0
        while k < len(attempts):  # each IP takes the next one or two attempts (one or two accounts)
            ip, take = ips[k], rng.choice([1, 1, 2])
            for account, reason in attempts[k : k + take]:
                self.emit(account, f"s-bot-{account}", start + rng.randrange(480_000),
                          {"type": "login", "outcome": "failure", "reason": reason,
                           "ip": ip})  # fmt: skip
            k += take

    # -- outages ----------------------------------------------------------------------------------
    def _outage(self, truths: list[Truth], n: int, outage: Outage) -> None:
        rng = self.rng
        start = (
            self.start_ms + self.duration_ms // 3 if outage.start_ms is None else outage.start_ms
        )
        end = start + outage.duration_ms
        for i in range(outage.users):
            u = _User(
                self, f"u{self.seed}-out{n}-{i:05d}", start + rng.randrange(outage.duration_ms)
            )
            u.truth.outage = outage.cause
            if outage.kind == "login":
                self._outage_login(u, outage.detail, end)
            else:
                self._outage_click(u, outage.control())
            truths.append(u.truth)

    def _outage_login(self, u: _User, reason: str, end: int) -> None:
        """Tries until they give up or the outage ends; many come back later and get in."""
        rng = self.rng
        low, high = rng.choices([(1, 2), (3, 4), (5, 8)], [20, 35, 45])[0]
        for _ in range(rng.randint(low, high)):
            if u.t >= end:
                break
            u.login("failure", reason)
            u.wait(6_000, 25_000)
        if rng.random() < 0.6:
            u.t = max(u.t, end) + int(rng.uniform(120_000, 2_400_000))
            u.login("success")
            for _ in range(rng.randint(2, 8)):
                u.think()
                self._ordinary_action(u)

    def _outage_click(
        self, u: _User, control: tuple[str, str, str, str, str | None, int, int]
    ) -> None:
        """Hammers the dead control once, then leaves."""
        rng = self.rng
        self._ordinary_login(u)
        u.think()
        for d in range(rng.randint(7, 15)):
            u.click(control, detail=d + 1, jitter=8)
            u.wait(120, 420)

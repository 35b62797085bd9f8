"""A botnet: hundreds of IPs, each failing for one or two accounts, together a surge for many
accounts. A security alert, never outreach per victim, never a login-outage incident; a real
outage (service reasons, or people retrying) is no attack; ordinary typos of a busy platform
neither."""

from __future__ import annotations

import random

from detectors.distributed_stuffing import DistributedState, DistributedStuffingDetector
from signals.events import LoginEvent
from signals.flags import SecurityAlert
from signals.wire import AnyEvent
from tests.unit.builders import (
    MINUTE,
    SECOND,
    alerts_of,
    by_ts,
    failures,
    flags_of,
    login,
    run_engine,
    signals_of,
)


def typos(minutes: int, per_minute: int, seed: int = 1) -> list[LoginEvent]:
    """Ordinary traffic: `per_minute` people a minute mistype once, each from their own IP."""
    rng = random.Random(seed)
    return [
        login(m * MINUTE + rng.randrange(MINUTE), f"typo-{m}-{k}", ip=f"100.{64 + m}.{k}.1")
        for m in range(minutes)
        for k in range(per_minute)
    ]


def botnet(start: int, accounts: int, real: list[str], seed: int = 2) -> list[LoginEvent]:
    """Within 8 minutes: each IP tries one or two accounts once; the real accounts are tried
    from 4 IPs each, at a human-looking pace."""
    rng = random.Random(seed)
    events = []
    for i in range(accounts):
        ip = f"198.18.{i // 200}.{i % 200 + 1}"
        events.append(
            login(start + rng.randrange(8 * MINUTE), f"leaked-{i}", ip=ip, reason="invalid_user")
        )
    for j, user in enumerate(real):
        for k in range(4):
            ip = f"198.19.{j}.{k + 1}"
            events.append(login(start + j * SECOND + k * 20 * SECOND, user, ip=ip))
            events.append(login(start + rng.randrange(8 * MINUTE), f"other-{j}-{k}", ip=ip))
    return events


def alerts_alone(events: list[LoginEvent]) -> list[SecurityAlert]:
    detector, state = DistributedStuffingDetector(), DistributedState()
    return [a for e in by_ts(events) if (a := detector.learn_one(state, e)) is not None]


def test_a_botnet_after_ordinary_traffic_is_one_distributed_stuffing_alert() -> None:
    events = typos(30, 3) + botnet(30 * MINUTE, 400, [])
    alerts = alerts_alone(events)
    assert [(a.kind, a.ip) for a in alerts] == [("distributed_stuffing", "")]
    assert alerts[0].distinct_ips is not None and alerts[0].distinct_ips >= 100
    assert alerts[0].distinct_accounts >= 100


def test_nothing_is_judged_in_the_first_window_it_only_sets_the_usual_level() -> None:
    assert alerts_alone(botnet(0, 400, [])) == []


def test_a_busy_platforms_steady_typos_never_alert() -> None:
    # 40 people a minute mistype: 400 accounts per window, far above 100, but usual.
    assert alerts_alone(typos(90, 40)) == []


def outage(reason: str) -> list[LoginEvent]:
    """600 clients within 7 minutes, each from their own IP, trying 3 to 8 times 15 s apart."""
    return [
        login(30 * MINUTE + k * 700 + r * 15 * SECOND, f"client-{k}",
              ip=f"100.80.{k // 200}.{k % 200}", reason=reason)
        for k in range(600)
        for r in range(3 + k % 6)
    ]  # fmt: skip


def test_a_login_outage_with_service_reasons_is_no_attack() -> None:
    assert alerts_alone(typos(40, 3) + outage("service_unavailable")) == []


def test_an_outage_that_says_bad_password_is_no_attack_people_retry() -> None:
    assert alerts_alone(typos(40, 3) + outage("bad_password")) == []


def test_botnet_victims_are_never_flagged_and_open_no_incident() -> None:
    real = [f"client-{j}" for j in range(30)]
    events: list[AnyEvent] = [*typos(30, 3), *botnet(30 * MINUTE, 400, real)]
    out = run_engine(by_ts(events))
    assert [a.kind for a in alerts_of(out)] == ["distributed_stuffing"]
    assert flags_of(out) == [] and signals_of(out) == []


def test_a_person_locked_out_during_the_botnet_from_their_own_ip_still_flags() -> None:
    me = failures(
        32 * MINUTE, 6, 20 * SECOND, user="me", ip="100.70.0.7", device_id="d-me", irregular=True
    )
    out = run_engine(by_ts([*typos(30, 3), *botnet(30 * MINUTE, 400, []), *me]))
    assert [f.user_id for f in flags_of(out)] == ["me"]


def test_tries_from_three_ips_are_not_one_person_but_one_device_on_three_ips_is() -> None:
    spread = [login(k * 20 * SECOND, "target", ip=f"100.90.0.{k % 3 + 1}") for k in range(6)]
    assert flags_of(run_engine(spread)) == []
    roaming = [
        login(k * 20 * SECOND, "me", ip=f"100.90.0.{k % 3 + 1}", device_id="d-phone")
        for k in range(6)
    ]
    assert [f.user_id for f in flags_of(run_engine(roaming))] == ["me"]
    two = [login(k * 20 * SECOND, "me", ip=f"100.90.0.{k % 2 + 1}") for k in range(6)]
    assert [f.user_id for f in flags_of(run_engine(two))] == ["me"]

"""Rage clicks: what must flag, what must not, and the boundaries."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from detectors.config import DetectionConfig
from detectors.rage_click import RageClickDetector, RageClickState
from signals.events import ClickEvent
from signals.exceptions import ConfigurationError
from signals.flags import RageClickEvidence, Signal
from tests.unit.builders import SECOND, click, clicks, engine_flags, learn_all, waiting_chat


def rage_signals(events: Iterable[ClickEvent], config: DetectionConfig | None = None) -> list:
    return learn_all(RageClickDetector(config), RageClickState(), events)


def evidence(signal: Signal) -> RageClickEvidence:
    assert isinstance(signal.evidence, RageClickEvidence)
    return signal.evidence


# -- must flag ------------------------------------------------------------------------------------
def test_six_fast_clicks_on_one_control_signal_at_the_sixth_click() -> None:
    events = clicks(0, 6, 250)
    detector, state = RageClickDetector(), RageClickState()
    results = [detector.learn_one(state, e) for e in events]
    assert [r is not None for r in results] == [False] * 5 + [True]
    signal = results[-1]
    assert signal is not None
    assert signal.kind == "rage_click"
    assert signal.ts == events[5].ts
    assert signal.strength == 1.0
    ev = evidence(signal)
    assert (ev.rule, ev.clicks, ev.bursts, ev.span_ms, ev.max_gap_ms) == ("burst", 6, 1, 1250, 250)
    assert (ev.target, ev.page, ev.label, ev.element) == ("#pay", "/billing", "Pay now", "button")


def test_six_fast_clicks_flag_through_the_engine() -> None:
    flags = engine_flags(clicks(0, 6, 250))
    assert len(flags) == 1
    flag = flags[0]
    assert flag.user_id == "u1"
    assert flag.severity == "low"
    assert [s.kind for s in flag.signals] == ["rage_click"]
    assert flag.ts == clicks(0, 6, 250)[5].ts


def test_six_clicks_with_every_gap_at_600ms_flags() -> None:
    assert len(rage_signals(clicks(0, 6, 600))) == 1


def test_one_gap_of_601ms_breaks_the_burst() -> None:
    assert rage_signals(clicks(0, 6, [300, 300, 601, 300, 300])) == []
    assert rage_signals(clicks(0, 6, 601)) == []


def test_exactly_six_clicks_flag_and_five_do_not() -> None:
    assert len(rage_signals(clicks(0, 6, 200))) == 1
    assert rage_signals(clicks(0, 5, 200)) == []
    assert engine_flags(clicks(0, 5, 200)) == []


def test_gaps_count_not_total_span_six_clicks_590ms_apart_span_2950ms_flag() -> None:
    signals = rage_signals(clicks(0, 6, 590))
    assert len(signals) == 1
    assert evidence(signals[0]).span_ms == 2950
    assert evidence(signals[0]).max_gap_ms == 590


def test_gaps_count_not_total_span_six_clicks_within_1s_with_one_700ms_gap_do_not_flag() -> None:
    events = clicks(0, 6, [50, 50, 700, 50, 50])
    assert events[-1].ts - events[0].ts < SECOND
    assert rage_signals(events) == []


def test_burst_that_keeps_going_signals_again_every_six_further_clicks() -> None:
    signals = rage_signals(clicks(0, 13, 200))
    # Issue 11: each signal's evidence is the whole burst so far (was [6, 6]: the last six).
    assert [evidence(s).clicks for s in signals] == [6, 12]
    flags = engine_flags(clicks(0, 13, 200))
    assert len({f.flag_id for f in flags}) == 1  # one open flag per user


def test_three_bursts_of_four_clicks_within_two_minutes_flag() -> None:
    events = clicks(0, 4, 300) + clicks(20 * SECOND, 4, 300) + clicks(40 * SECOND, 4, 300)
    signals = rage_signals(events)
    assert len(signals) == 1
    ev = evidence(signals[0])
    assert (ev.rule, ev.bursts, ev.clicks) == ("repeated_bursts", 3, 12)
    assert signals[0].ts == events[-1].ts
    assert len(engine_flags(events)) == 1


def test_bursts_of_five_clicks_count_as_bursts() -> None:
    events = clicks(0, 5, 300) + clicks(30 * SECOND, 5, 300) + clicks(60 * SECOND, 5, 300)
    signals = rage_signals(events)
    assert len(signals) == 1
    assert evidence(signals[0]).rule == "repeated_bursts"


def test_repeated_bursts_evidence_counts_only_the_clicks_of_the_counted_bursts() -> None:
    # the first burst falls out of the 2-minute window; the signal counts the last three bursts
    events = [e for start in (0, 70, 140, 150) for e in clicks(start * SECOND, 4, 300)]
    signals = rage_signals(events)
    assert len(signals) == 1
    ev = evidence(signals[0])
    assert (ev.rule, ev.bursts) == ("repeated_bursts", 3)
    assert ev.clicks == 12
    assert ev.span_ms == events[-1].ts - events[4].ts


def test_repeated_bursts_window_is_two_minutes_from_first_click_to_the_last_counted_click() -> None:
    def three_bursts(last_click_at: int) -> list[ClickEvent]:
        third = last_click_at - 900
        return clicks(0, 4, 300) + clicks(60 * SECOND, 4, 300) + clicks(third, 4, 300)

    assert len(rage_signals(three_bursts(120_000))) == 1
    assert rage_signals(three_bursts(120_001)) == []


def test_three_bursts_spread_over_more_than_two_minutes_do_not_flag() -> None:
    events = clicks(0, 4, 300) + clicks(70 * SECOND, 4, 300) + clicks(140 * SECOND, 4, 300)
    assert rage_signals(events) == []


def test_two_bursts_of_four_do_not_flag() -> None:
    assert rage_signals(clicks(0, 4, 300) + clicks(10 * SECOND, 4, 300)) == []


def test_bursts_of_three_clicks_do_not_count() -> None:
    events = [e for k in range(6) for e in clicks(k * 10 * SECOND, 3, 300)]
    assert rage_signals(events) == []


def test_clicks_without_target_within_30px_are_one_control() -> None:
    events = [
        click(i * 300, target=None, x=500 + (i % 2) * 15, y=300 + (i % 2) * 15) for i in range(18)
    ]  # fmt: skip  (18: without a target it takes 3x the clicks)
    assert len(rage_signals(events)) == 1


def test_clicks_without_target_walking_down_a_list_are_not_one_control() -> None:
    # Issue 11: a control without a target is a fixed place (the burst's first click and a
    # radius), never a chain of clicks 20 px apart walking down a list. (Was: one control.)
    events = [click(i * 300, target=None, x=500, y=300 + 20 * i) for i in range(12)]
    assert rage_signals(events) == []


def test_clicks_without_target_jittering_around_the_first_click_stay_one_control() -> None:
    offsets = [0, 12, -12, 25, -25, 10, 0, 20, 5] * 2
    events = [click(i * 300, target=None, x=500 + dx, y=300) for i, dx in enumerate(offsets)]
    assert len(rage_signals(events)) == 1


def test_burst_without_target_is_reported_but_never_flags() -> None:
    # Issue 11: real people at work click one spot fast routinely (Balabit sessions).
    events = [click(i * 200, target=None, x=500, y=300) for i in range(60)]
    signals = rage_signals(events)
    assert signals and {s.strength for s in signals} == {0.0}
    assert engine_flags(events) == []
    # ... nor corroborates a weak signal of another kind by default
    assert engine_flags([*events[:18], *waiting_chat(5 * SECOND, 90 * SECOND)]) == []


def test_burst_without_target_needs_18_clicks_for_a_signal() -> None:
    events = [click(i * 200, target=None, x=500, y=300) for i in range(18)]
    assert len(rage_signals(events[:-1])) == 0
    assert [evidence(s).clicks for s in rage_signals(events)] == [18]
    # ... and the repeated-bursts rule needs a target
    bursts = [e for k in range(4) for e in clicks(k * 15 * SECOND, 5, 250, target=None, x=9, y=9)]
    assert rage_signals(bursts) == []


def test_burst_without_target_given_weight_corroborates_but_never_flags_alone() -> None:
    config = DetectionConfig(rage_untargeted_strength=0.5)
    burst: list = [click(i * 200, target=None, x=500, y=300) for i in range(60)]
    assert {s.strength for s in rage_signals(burst, config)} == {0.5}
    assert engine_flags(burst, config) == []
    events = [*burst[:18], *waiting_chat(5 * SECOND, 90 * SECOND)]  # a weak chat (90 s)
    flags = engine_flags(events, config)
    assert len(flags) == 1 and flags[0].severity == "low"
    assert {s.kind for s in flags[0].signals} == {"rage_click", "abrupt_chat_end"}


def test_untargeted_settings_come_from_the_config_and_stay_weak() -> None:
    events = [click(i * 200, target=None, x=500, y=300) for i in range(6)]
    config = DetectionConfig(rage_untargeted_strength=0.9, rage_untargeted_min_clicks=6)
    assert [s.strength for s in rage_signals(events, config)] == [0.9]
    with pytest.raises(ValueError):
        DetectionConfig(rage_untargeted_strength=1.0)  # would flag alone
    with pytest.raises(ConfigurationError):
        DetectionConfig(rage_untargeted_min_clicks=5)  # below the targeted rule


def test_clicks_without_target_31px_apart_are_different_controls() -> None:
    events = [click(i * 300, target=None, x=500 + (i % 2) * 31, y=300) for i in range(8)]
    assert rage_signals(events) == []


def test_clicks_without_target_on_another_page_are_another_control() -> None:
    events = [
        click(i * 300, target=None, x=500, y=300, page="/a" if i % 2 else "/b") for i in range(8)
    ]
    assert rage_signals(events) == []


def test_same_target_on_another_page_is_another_control() -> None:
    events = [click(i * 300, page="/billing" if i % 2 else "/checkout") for i in range(8)]
    assert rage_signals(events) == []


def test_a_button_with_rising_mouse_detail_flags() -> None:
    events = [click(i * 200, detail=i + 1) for i in range(6)]
    assert len(rage_signals(events)) == 1


# -- must not flag --------------------------------------------------------------------------------
def test_double_click_does_not_flag() -> None:
    events = [click(0, detail=1), click(180, detail=2)]
    assert rage_signals(events) == []
    assert engine_flags(events) == []


def test_triple_click_text_selection_does_not_flag() -> None:
    events = [
        click(i * 150, target="#entry-text", page="/journal", label=None, element="p", detail=d)
        for i, d in enumerate((1, 2, 3))
    ]
    assert rage_signals(events) == []


@pytest.mark.parametrize("element", ["p", "span", "li", "td", "h2"])
def test_repeated_triple_click_selection_on_text_does_not_flag_however_fast(element: str) -> None:
    events = [
        click(i * 120, target="#entry-text", page="/journal", label=None, element=element,
              detail=1 + i % 3)
        for i in range(18)
    ]  # fmt: skip
    assert rage_signals(events) == []
    assert engine_flags(events) == []


def test_text_element_hammered_past_detail_three_flags() -> None:
    events = [
        click(i * 120, target="#broken-link", label=None, element="span", detail=i + 1)
        for i in range(6)
    ]
    assert len(rage_signals(events)) == 1


@pytest.mark.parametrize(
    "fields",
    [
        {"label": "+"},
        {"label": "-"},
        {"label": "−"},
        {"label": ">"},
        {"label": "<"},
        {"label": "›"},
        {"label": "Next"},
        {"label": "Previous"},
        {"label": "Next slide"},
        {"label": "  NEXT  "},
        {"label": "Previous month"},
        {"label": None, "role": "spinbutton"},
        {"label": None, "role": "slider"},
        {"label": None, "role": "tab"},
        {"label": "Profile", "role": "tab"},
        {"label": None, "element": "input", "input_type": "number"},
        {"label": None, "element": "input", "input_type": "range"},
    ],
    ids=lambda f: "-".join(f"{k}={v}" for k, v in f.items()),
)
def test_steppers_sliders_carousels_and_tabs_never_flag_however_fast(fields: dict) -> None:
    events = [click(i * 80, target="#control", **fields) for i in range(40)]
    assert rage_signals(events) == []
    assert engine_flags(events) == []


def test_stepper_bursts_never_count_towards_repeated_bursts() -> None:
    events = [
        e for k in range(5) for e in clicks(k * 10 * SECOND, 5, 200, target="#qty", label="+")
    ]
    assert rage_signals(events) == []


def test_clicks_1_5s_apart_do_not_flag() -> None:
    events = clicks(0, 20, 1_500)
    assert rage_signals(events) == []
    assert engine_flags(events) == []


def test_fast_clicks_on_different_controls_do_not_flag() -> None:
    events = [click(i * 150, target=f"#nav-{i}", label=f"Item {i}") for i in range(12)]
    assert rage_signals(events) == []


def test_fast_clicks_without_target_far_apart_do_not_flag() -> None:
    events = [click(i * 150, target=None, x=100 + 200 * i, y=300) for i in range(12)]
    assert rage_signals(events) == []


def test_alternating_between_two_controls_does_not_flag() -> None:
    events = [click(i * 150, target="#a" if i % 2 else "#b") for i in range(12)]
    assert rage_signals(events) == []


def test_repeated_short_bursts_on_different_targetless_spots_of_a_page_do_not_flag() -> None:
    # Three bursts of four clicks, each on a different spot (no target), hundreds of px apart:
    # three different controls, so the repeated-bursts rule does not apply.
    events = [
        e
        for k, x in enumerate((100, 500, 900))
        for e in clicks(k * 15 * SECOND, 4, 250, target=None, x=x, y=300)
    ]
    assert rage_signals(events) == []


def test_repeated_short_bursts_on_the_same_target_id_of_different_pages_do_not_flag() -> None:
    # "#save" on three pages is three controls (one control = same page + target).
    events = [
        e
        for k, page in enumerate(("/journal", "/settings", "/profile"))
        for e in clicks(k * 15 * SECOND, 4, 250, target="#save", label="Save", page=page)
    ]
    assert rage_signals(events) == []


def test_other_users_clicks_do_not_join_a_burst() -> None:
    events = [click(i * 200, user="a" if i % 2 else "b") for i in range(10)]
    assert engine_flags(events) == []


def test_thresholds_come_from_the_config() -> None:
    config = DetectionConfig(rage_min_clicks=8, rage_max_gap_ms=1_000)
    assert rage_signals(clicks(0, 7, 900), config) == []
    assert len(rage_signals(clicks(0, 8, 900), config)) == 1

"""Offline tools: the labelled traffic simulator and the evaluation that scores the detectors
(and the PostHog/Datadog baselines) against its labels (`frustration simulate`, `evaluate`).

May use `signals/`, `detectors/` and the shared `streams` modules; never a runner nor the queue.
"""

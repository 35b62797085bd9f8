"""The support queue both runners feed: the SQLite store, the feed that puts the detector core's
outputs into it (through the incident tracker), its JSON API and its pages.

May use `signals/`, `detectors/` and the shared `streams` modules; never a runner
(`streams.embedded`, `streams.kafka`) nor `streams.lab`.
"""

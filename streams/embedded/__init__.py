"""The embedded runner, the default: one process, no broker. HTTP ingest, the detector core
in-process, the support queue's app mounted beside it (`frustration serve`).

May use `signals/`, `detectors/`, `streams.queue`, the shared `streams` modules and, for the
demo traffic, `streams.lab`; never `streams.kafka`.
"""

"""The Kafka runner, for when one machine is not enough: faust workers partitioned by user
(`frustration worker`), topic and produce tools, and the queue sink that feeds the support queue
from the flags topic (`frustration queue-sink`).

May use `signals/`, `detectors/`, `streams.queue` and the shared `streams` modules; never
`streams.embedded`.
"""

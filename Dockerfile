# The frustration-signals app, one image for every sub-command: `serve` (embedded, the default),
# `worker` and `queue-sink` (Kafka runner), `produce`, `flags`, `replay` ...
# The install pulls every runtime dependency (faust-streaming and kafka-python included).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY signals ./signals
COPY detectors ./detectors
COPY streams ./streams
RUN pip install --no-cache-dir . && useradd --create-home app && mkdir -p /data && chown app /data
USER app
# Everything a process writes lives under /data, the volume each compose service mounts.
ENV FRUSTRATION_DB_PATH=/data/frustration.db \
    FRUSTRATION_CHECKPOINT_PATH=/data/detector-state.bin \
    FRUSTRATION_WORKER_DATA_DIR=/data/worker
# 8700: serve and queue-sink (HTTP, /metrics); 6066: a worker's faust web port (/metrics).
EXPOSE 8700 6066
ENTRYPOINT ["frustration"]
CMD ["serve", "--host", "0.0.0.0"]

# The frustration-signals app: `frustration serve` (embedded) or any other sub-command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY signals ./signals
COPY detectors ./detectors
COPY streams ./streams
RUN pip install --no-cache-dir . && useradd --create-home app && mkdir -p /data && chown app /data
USER app
ENV FRUSTRATION_DB_PATH=/data/frustration.db \
    FRUSTRATION_CHECKPOINT_PATH=/data/detector-state.bin
EXPOSE 8700
ENTRYPOINT ["frustration"]
CMD ["serve", "--host", "0.0.0.0"]

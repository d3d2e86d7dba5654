# syntax=docker/dockerfile:1
# Build stage: wheels for the project and every dependency (compilers live only here).
FROM python:3.11-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip wheel
COPY pyproject.toml README.md ./
COPY sender ./sender
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[all]'

# Runtime stage: the same install path as `make`, from the wheels, as a non-root user.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/sender --create-home sender
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels 'integration-sender[all]' \
    && rm -rf /wheels
COPY config /etc/sender/examples
WORKDIR /var/lib/sender
USER 10001
ENV SENDER_CONFIG=/etc/sender/sender.toml \
    SENDER_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SENDER_HEALTH_PORT', '8080') + '/healthz', timeout=2)"]
ENTRYPOINT ["sender"]
CMD ["run"]

# syntax=docker/dockerfile:1
# integration-sender: `docker build -t integration-sender .`
# The install is the one `make` runs and the tests exercise (pip install of the project with
# its extras), split in two: wheels are built here, installed below without a compiler.

# -- build: wheels for the project and every dependency ------------------------------------------
FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Every dependency ships manylinux wheels for amd64 and arm64; if one ever needs compiling,
# install build-essential in this stage, never in the runtime stage.
COPY pyproject.toml README.md ./
COPY sender ./sender
COPY adapters ./adapters
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[all]'

# -- runtime: the wheels installed as a non-root user, nothing to compile with -------------------
FROM python:3.11.11-slim-bookworm
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SENDER_CONFIG=/etc/sender/sender.toml \
    SENDER_LOG_FORMAT=json \
    SENDER_HEALTH_PORT=8080
RUN groupadd --system --gid 10001 sender \
    && useradd --system --uid 10001 --gid sender --home-dir /var/lib/sender --create-home \
       --shell /usr/sbin/nologin sender
# the wheels are mounted from the build stage, not copied: no layer keeps them
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'integration-sender[all]'
COPY config /etc/sender/examples
WORKDIR /var/lib/sender
USER 10001:10001
EXPOSE 8080
# /healthz of the control server (daemon.listen must include the port in SENDER_HEALTH_PORT;
# slim images have no curl, so Python asks)
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ['SENDER_HEALTH_PORT'] + '/healthz', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sender"]
CMD ["run"]

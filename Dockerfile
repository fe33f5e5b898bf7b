# The gateway: the one service agents talk to (OTLP/gRPC on 4317; health and
# metrics over HTTP on 4318). compose.yaml builds it; settings are GATEWAY_*
# variables (gateway/settings.py).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The same pins as `make setup`, so the image runs the versions the tests ran.
COPY pyproject.toml constraints.txt ./
COPY gateway/ gateway/
COPY otel_agents/ otel_agents/
RUN pip install -c constraints.txt '.[gateway]'

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# UID 1000 is the first user on most hosts: `otel-gateway tenants add` writes the
# tenants file with mode 0600, and compose runs the container as the file's
# owner (HOST_UID, default 1000) so it can read it.
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin gateway \
    # The fleet's last-seen table (GATEWAY_FLEET_STATE_FILE) lives on a volume here.
    && mkdir -p /var/lib/otel-gateway && chown gateway:gateway /var/lib/otel-gateway
USER gateway
WORKDIR /srv
EXPOSE 4317 4318
# The image has no curl; the interpreter it already ships is enough.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:4318/healthz', timeout=2)"]
ENTRYPOINT ["otel-gateway"]
CMD ["serve"]

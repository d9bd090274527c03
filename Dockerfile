# The CPU image: `visionrpc serve` on 0.0.0.0:50051 with the shipped model, as a non-root user.
#
#   docker build -t visionrpc:local .                          # FROM python:3.11-slim
#   tools/make_base_image.sh                                   # no registry: a Debian base instead
#   docker build --build-arg BASE=visionrpc-base:bookworm -t visionrpc:local .
#
# BASE is any image with Python 3.11+ as `python3` (and its venv module). No `# syntax` line and no
# RUN --mount: it builds with the classic builder and with BuildKit, from compose v1 and v2.
# The GPU image is Dockerfile.gpu.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# pip's sources, all empty by default (= PyPI). INDEX_URL, EXTRA_INDEX_URL, TRUSTED_HOST: a site's
# own index. PIP_OFFLINE=1: wheels from wheelhouse/ only (tools/make_wheelhouse.sh), no index.
# A CA bundle at wheelhouse/ca.crt is given to pip (a TLS-inspecting proxy). This stage is thrown
# away: neither the wheels nor the CA bundle end up in the image.
ARG INDEX_URL=""
ARG EXTRA_INDEX_URL=""
ARG TRUSTED_HOST=""
ARG PIP_OFFLINE=""
ARG EXTRA=server
ENV PIP_CONFIG_FILE=/tmp/pip.conf PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY wheelhouse/ /tmp/wheelhouse/
COPY tools/extra_requirements.py pyproject.toml /tmp/src/
# The dependencies first, in a layer of their own: it is rebuilt only when pyproject.toml or the
# wheelhouse change, not on every source change.
RUN set -eu; \
    { echo "[global]"; echo "find-links = /tmp/wheelhouse"; \
      if [ -n "$PIP_OFFLINE" ]; then echo "no-index = true"; fi; \
      if [ -n "$INDEX_URL" ]; then echo "index-url = $INDEX_URL"; fi; \
      if [ -n "$EXTRA_INDEX_URL" ]; then echo "extra-index-url = $EXTRA_INDEX_URL"; fi; \
      if [ -n "$TRUSTED_HOST" ]; then echo "trusted-host = $TRUSTED_HOST"; fi; \
      if [ -f /tmp/wheelhouse/ca.crt ]; then echo "cert = /tmp/wheelhouse/ca.crt"; fi; \
    } > /tmp/pip.conf; \
    python3 -m venv /opt/visionrpc; \
    cd /tmp/src && python3 extra_requirements.py "$EXTRA" > /tmp/requirements.txt; \
    /opt/visionrpc/bin/pip install --quiet -r /tmp/requirements.txt
COPY README.md LICENSE /tmp/src/
COPY src /tmp/src/src
# The package itself (the models are its package data); then pip and setuptools leave the venv.
RUN /opt/visionrpc/bin/pip install --quiet --no-deps /tmp/src \
    && /opt/visionrpc/bin/pip uninstall --quiet --yes pip setuptools

FROM ${BASE}
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin visionrpc
COPY --from=build /opt/visionrpc /opt/visionrpc
ENV PATH=/opt/visionrpc/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    VISIONRPC_HOST=0.0.0.0 VISIONRPC_PORT=50051 VISIONRPC_LOG_FORMAT=json
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
WORKDIR /home/visionrpc
# gRPC; Prometheus metrics when VISIONRPC_METRICS__PORT=9464 (and __HOST=0.0.0.0) are set.
EXPOSE 50051 9464
# The light probe: gRPC health only, no CLI start-up. NOT_SERVING while models load or drain.
HEALTHCHECK --interval=5s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "visionrpc.healthcheck"]
# Exec form: visionrpc is PID 1 and gets SIGTERM itself, drains for VISIONRPC_GRACE_PERIOD_S
# (default 10 s) and exits 0. Give `docker stop -t` / stop_grace_period more than that.
STOPSIGNAL SIGTERM
CMD ["visionrpc", "serve", "--host", "0.0.0.0"]

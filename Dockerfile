# CUDA image that runs train.py:
#   docker build -t edgetam-train .
#   docker run --gpus all --ipc=host -v /datasets:/work/data -v /weights:/work/weights -v $PWD/logs:/work/logs \
#       edgetam-train experiment=edgetam_distill trainer=ddp trainer.devices=8
# The torch/torchvision pins must equal pyproject.toml's (tests/test_dockerfile.py checks it).
FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PROJECT_ROOT=/work

# apt packages follow the base image's release (pinning them breaks on every base-image update)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /work
# dependencies first (cached layer), then the code
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY edgetam_train ./edgetam_train
# the project itself (a local path: DL3013 does not apply; its dependencies are pinned in pyproject.toml)
# hadolint ignore=DL3013
RUN pip install ".[cluster]"
COPY configs ./configs
COPY scripts ./scripts
COPY train.py ./

ENTRYPOINT ["python", "train.py"]

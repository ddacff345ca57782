# The image every KFP component of this collection runs in (base_image of each component).
# Build and push it, then compile the pipelines against it:
#   docker build -t REGISTRY/mlops-workflow:0.1.0 .
#   mlops compile --image REGISTRY/mlops-workflow:0.1.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mlops

# CPU builds of torch/torchvision first, from PyTorch's CPU index, so that the pinned
# constraints below (which name the same versions) are already satisfied and the CUDA
# build is never pulled into the image.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1

COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
# The constraints pin the CUDA-only nvidia-* wheels that PyPI's torch needs; the CPU build
# above does not need them, so they are filtered out of the constraints used here.
RUN grep -v -E '^(nvidia-|triton==|torch==|torchvision==)' constraints.txt > /tmp/constraints-cpu.txt \
    && pip install -c /tmp/constraints-cpu.txt '.[all]' \
    && python -c "import components.ingest.core, kfp, minio, torch; print(torch.__version__)"

RUN useradd --uid 1000 --create-home mlops
USER 1000

# The image every KFP component of this collection runs in (base_image of each component).
# Build and push it, then compile the pipelines against it:
#   docker build -t REGISTRY/mlops-workflow:0.1.0 .
#   mlops compile --image REGISTRY/mlops-workflow:0.1.0
# The CUDA variant (for `mlops compile --accelerator nvidia.com/gpu` and GPU TrainJobs) differs
# only in the wheel index torch comes from:
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu130 \
#       -t REGISTRY/mlops-workflow:0.1.0-cu130 .
#   mlops compile --image REGISTRY/mlops-workflow:0.1.0-cu130 --accelerator nvidia.com/gpu
# The same code runs in both (CUDA is used when a GPU is visible); the CUDA image is several
# GB larger (the CUDA libraries) and needs a node driver that supports CUDA 13.0.
FROM python:3.11-slim

# PyTorch's wheel index: cpu (default) or a CUDA build such as cu130.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/mlops

# torch/torchvision first, from the chosen index (CPU by default), so that the pinned
# constraints below (which name the same versions) are already satisfied and PyPI's build
# is never pulled into the image.
RUN pip install --index-url "$TORCH_INDEX" \
        torch==2.14.1 torchvision==0.29.1

COPY constraints.txt setup.cfg pyproject.toml README.md ./
COPY components ./components
COPY pipelines ./pipelines
COPY demo ./demo
# The constraints pin the nvidia-* wheels that PyPI's torch needs; the CPU build does not need
# them and a CUDA build from PyTorch's index brings its own, so they are filtered out here.
RUN grep -v -E '^(nvidia-|triton==|torch==|torchvision==)' constraints.txt > /tmp/constraints-cpu.txt \
    && pip install -c /tmp/constraints-cpu.txt '.[all]' \
    && python -c "import components.ingest.core, kfp, minio, torch; print(torch.__version__)"

RUN useradd --uid 1000 --create-home mlops
USER 1000

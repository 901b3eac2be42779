# syntax=docker/dockerfile:1
#
# VisionRAG: Llama 3.2 Vision behind LitServe, with a searchable history of every answer.
#
#   docker build -t YOUR_REGISTRY/visionrag:0.1.0 .
#   docker run --gpus all -p 8000:8000 -e HF_TOKEN=hf_... -v visionrag:/workspace YOUR_REGISTRY/visionrag:0.1.0
#
# Weights are NOT in the image: the first start downloads them into HF_HOME on the /workspace volume
# (progress bars in the log) and later starts reuse them. To bake them in instead (a bigger image, no
# download at start), pass a model id and the token as a build secret:
#
#   HF_TOKEN=hf_... docker build --build-arg BAKE_MODEL=meta-llama/Llama-3.2-11B-Vision-Instruct \
#       --secret id=hf_token,env=HF_TOKEN -t YOUR_REGISTRY/visionrag:0.1.0-baked .
#
# and run it with MODEL_NAME=/opt/model (deploy.py: --model /opt/model). The baked copy lives outside
# /workspace on purpose: the pod volume is mounted over /workspace and would hide it.
#
# See runpod/README.md for the RunPod template, the deploy script and how this file was checked.

# Pinned: PyTorch 2.8.0 built for CUDA 12.8 + cuDNN 9, Python 3.11 (L40S is sm_89, covered by these wheels).
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

# HF_HOME and FASTEMBED_CACHE_PATH: model caches on the pod volume, which survives restarts.
# VISIONRAG_DATA_DIR: the journal and the embedded Qdrant store, also on the volume.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/workspace/hf \
    FASTEMBED_CACHE_PATH=/workspace/fastembed \
    VISIONRAG_DATA_DIR=/workspace/data \
    HOST=0.0.0.0 \
    PORT=8000

WORKDIR /app

# The project needs Python 3.11+; fail the build here rather than at `pip install`.
RUN python -c "import sys; assert sys.version_info >= (3, 11), sys.version"

COPY . /app

# Install the project from pyproject.toml (its dependency list is the only one). The constraint pins
# torch to the exact build already in the base image, so pip keeps that CUDA build instead of
# replacing it with another torch from PyPI.
RUN python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > /tmp/torch-constraint.txt \
 && pip install -c /tmp/torch-constraint.txt . \
 && cd / && python -c "import torch, visionrag.server.app, visionrag.search.history; from visionrag import VisionRAG; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && command -v visionrag

# Optional: bake the weights into the image (see the top of this file). Empty by default: no download.
ARG BAKE_MODEL=""
RUN --mount=type=secret,id=hf_token \
    if [ -n "$BAKE_MODEL" ]; then \
      HF_TOKEN="$(cat /run/secrets/hf_token 2>/dev/null || true)" python -c "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], local_dir='/opt/model', ignore_patterns=['original/*', '*.pth'])" "$BAKE_MODEL"; \
    fi

EXPOSE 8000

# /health answers 200 only once the model and the history store are ready. Loading an 11B model
# (and downloading it on the first start) takes minutes, hence the long start period. A non-200
# answer or no answer raises in urlopen, so python exits 1 = unhealthy.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=8)"]

# start.sh fills in the documented defaults, prints one start line (no secrets), fetches the weights
# if needed, then execs `visionrag serve` (one API process, one GPU worker per visible GPU).
CMD ["bash", "/app/runpod/start.sh"]

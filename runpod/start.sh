#!/usr/bin/env bash
# Container start script (the image's CMD and the RunPod template's start command).
#
# 1. fills in the documented defaults for whatever the environment leaves unset,
# 2. drops RunPod secret references that RunPod could not resolve (a secret that was never created),
# 3. prints one start line, without secret values,
# 4. downloads the model into HF_HOME unless it is already there (progress bars in the log),
# 5. execs `visionrag serve` with any arguments given to this script.
#
# All configuration is read from the environment by the server itself (see server/settings.py);
# this script only sets defaults. `visionrag serve` runs ONE API process, which alone owns the
# journal and the embedded Qdrant store, plus one GPU worker per visible GPU.
set -euo pipefail

log() { echo "visionrag-start: $*"; }

# 1. defaults: caches and data on the pod volume (/workspace survives restarts)
: "${HF_HOME:=/workspace/hf}"
: "${FASTEMBED_CACHE_PATH:=/workspace/fastembed}"
: "${VISIONRAG_DATA_DIR:=/workspace/data}"
: "${MODEL_NAME:=meta-llama/Llama-3.2-11B-Vision-Instruct}"
: "${HOST:=0.0.0.0}"
: "${PORT:=8000}"
export HF_HOME FASTEMBED_CACHE_PATH VISIONRAG_DATA_DIR MODEL_NAME HOST PORT

# 2. a secret reference RunPod could not resolve arrives as the literal "{{ RUNPOD_SECRET_... }}"
unresolved() { [[ "${!1:-}" == *"RUNPOD_SECRET_"* ]]; }
if unresolved VISIONRAG_API_KEY; then
    log "ERROR: VISIONRAG_API_KEY refers to a RunPod secret that does not exist (${VISIONRAG_API_KEY})." >&2
    log "Create that secret in the RunPod console (Secrets) and restart the pod; refusing to start without the key." >&2
    exit 1
fi
for name in HF_TOKEN QDRANT_API_KEY DB_API_KEY; do
    if unresolved "$name"; then
        log "WARNING: $name refers to a RunPod secret that does not exist (${!name}); ignoring it." >&2
        unset "$name"
    fi
done

# 3. one start line, no secret values
if [[ -n "${QDRANT_URL:-${DB_URL:-}}" ]]; then
    store="${QDRANT_URL:-${DB_URL:-}}"
    store="${store%%\?*}"
    [[ "$store" == *@* ]] && store="${store%%://*}://${store#*@}"
    history="qdrant server $store"
else
    history="embedded store in $VISIONRAG_DATA_DIR (owned by the single API process)"
fi
set_or_unset() { if [[ -n "${!1:-}" ]]; then echo set; else echo unset; fi; }
log "model=$MODEL_NAME devices=${VISIONRAG_DEVICES:-auto} placement=${VISIONRAG_PLACEMENT:-replicate}" \
    "listen=$HOST:$PORT history=[$history] hf_cache=$HF_HOME" \
    "hf_token=$(set_or_unset HF_TOKEN) api_key=$(set_or_unset VISIONRAG_API_KEY)"
if [[ -z "${VISIONRAG_API_KEY:-}" ]]; then
    log "note: VISIONRAG_API_KEY is unset, so anyone who knows the URL can use this server."
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null \
        | while IFS= read -r gpu; do log "gpu $gpu"; done || true
fi

# 4. weights: a local directory is used as is; a hub id is fetched once into HF_HOME
if [[ -d "$MODEL_NAME" ]]; then
    log "model: local directory $MODEL_NAME"
elif [[ "${HF_HUB_OFFLINE:-0}" == "1" ]]; then
    log "model: HF_HUB_OFFLINE=1, using the cache in $HF_HOME as is"
else
    log "model: making sure $MODEL_NAME is in $HF_HOME (the first start downloads ~22 GB; later starts reuse the volume)"
    python - "$MODEL_NAME" <<'PY'
import sys

from huggingface_hub import snapshot_download

# original/* holds Meta's consolidated .pth copy of the same weights: transformers does not need it.
path = snapshot_download(sys.argv[1], ignore_patterns=["original/*", "*.pth"])
print(f"visionrag-start: model files ready in {path}", flush=True)
PY
fi

# 5. the server; PORT, HOST and every other setting come from the environment
log "exec visionrag serve $*"
exec visionrag serve "$@"

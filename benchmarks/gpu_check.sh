#!/usr/bin/env bash
# Run every method at 512 px, 50 steps, fp16 on a CUDA machine, twice. The first run uses the
# profile samedit picks for an 8 GiB card (7.5 GiB free: model CPU offload) and caps PyTorch
# at 7.5 GiB. The second keeps every model on the GPU. Both print peak VRAM and seconds per
# edit, and save their JSON rows in $OUT (default benchmarks/results).
#
#   bash benchmarks/gpu_check.sh                               # random-full weights
#   SAMEDIT_BENCH_MODELS=default bash benchmarks/gpu_check.sh  # cached real weights
#
# Each run has a time limit, so the whole check ends within 8 minutes. A run cut off by its
# limit still leaves the rows it finished in $OUT. On a slow GPU, rerun with fewer --methods.
# Needs the `accelerate` package (offload).
set -uo pipefail
cd "$(dirname "$0")/.."

models=${SAMEDIT_BENCH_MODELS:-random-full}
out=${OUT:-benchmarks/results}
mkdir -p "$out"
export HF_HUB_OFFLINE=1

if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: PyTorch found no CUDA device; run it on a machine with an NVIDIA GPU" >&2
    exit 1
fi
{
    date -u +%Y-%m-%dT%H:%MZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch, diffusers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'diffusers', diffusers.__version__)"
    git rev-parse --short HEAD 2>/dev/null || true
} | tee "$out/gpu-machine.txt"

common=(--models "$models" --size 512 --steps 50 --device cuda --dtype fp16)
status=0

echo "== 8 GiB profile (plan for 7.5 GiB free, PyTorch capped at 7.5 GiB)"
rm -f "$out/gpu-8gib.jsonl"
timeout 260 python benchmarks/methods.py "${common[@]}" --plan-memory 7.5 --save "$out/gpu-8gib.jsonl" || status=1
timeout 50 python benchmarks/methods.py "${common[@]}" --plan-memory 7.5 --methods none --stages segment \
    --sam-model sam-vit-h --save "$out/gpu-8gib.jsonl" || status=1

echo "== every model on the GPU (no offload, VAE fp32)"
rm -f "$out/gpu-resident.jsonl"
timeout 150 python benchmarks/methods.py "${common[@]}" --offload none --stages none --inversion-file none \
    --save "$out/gpu-resident.jsonl" || status=1

exit $status

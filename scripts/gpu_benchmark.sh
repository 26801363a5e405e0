#!/usr/bin/env bash
# The benchmark on a GPU: SD v1.4 architecture (random weights), 512², 50 PNDM
# steps, guidance 7.5, batch 1 and 8, bf16 and fp16: ours vs StableDiffusionPipeline, plus the opt-in
# fast mode in fp16. One table per dtype and batch: s/image, images/s, it/s, peak max_memory_allocated,
# U-Net+VAE share (CUDA events), MFU against the bf16/fp16 matmul rate measured in the same process.
# Sized for under 8 minutes on one H100/H200-class GPU (most of it is torch.compile for fast mode).
# Skips cleanly (exit 0) without CUDA.
#
#   bash scripts/gpu_benchmark.sh [OUT_DIR]   # default outputs/gpu_benchmark: benchmark.log, .png, TensorBoard
set -uo pipefail
out=${1:-outputs/gpu_benchmark}
if ! python3 -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: GPU benchmark skipped"
    exit 0
fi
mkdir -p "$out"
log="$out/benchmark.log"
: >"$log"  # a rerun into the same folder starts a new log
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
    python3 -c "import torch, diffusers, transformers, lightning as L; print('torch', torch.__version__, \
'cuda', torch.version.cuda, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, \
'lightning', L.__version__)"
} 2>&1 | tee -a "$log"
common=(--gpu --model sd14 --height 512 --steps 50 --scheduler pndm --guidance 7.5 --batch 1 8 --batches 1 --repeats 2)
# bf16: the exact variants only (about 1 min); fp16: also fast mode (compiles once per batch size).
timeout -k 10 "${BF16_LIMIT:-150}" python3 -m ldm_lightning.lab.benchmark "${common[@]}" --dtype bf16 2>&1 | tee -a "$log"
timeout -k 10 "${FP16_LIMIT:-330}" python3 -m ldm_lightning.lab.benchmark "${common[@]}" --dtype fp16 --fast 2>&1 | tee -a "$log"
python3 -m ldm_lightning.lab.benchmark_report "$log" --out "$out/benchmark.png" --tensorboard "$out"

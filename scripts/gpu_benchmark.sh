#!/usr/bin/env bash
# GPU section of the benchmark (issue 5.6): SD v1.4 architecture (random weights), 512², 50 steps,
# batch 1 and 8, bf16 and fp16, ours vs StableDiffusionPipeline. Prints one table per setting with
# s/image (→ images/s), peak max_memory_allocated, counted TFLOP per image and MFU against the measured
# matmul rate of the same dtype. Sized to finish in under 10 minutes on one H100/H200-class GPU.
# Skips cleanly (exit 0) without CUDA.
set -uo pipefail
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA device: GPU benchmark skipped"; exit 0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for dtype in bf16 fp16; do
    for batch in 1 8; do
        timeout -k 10 150 python scripts/benchmark.py --gpu --model sd14 --height 512 --steps 50 \
            --scheduler pndm --guidance 7.5 --batch "$batch" --dtype "$dtype" --repeats 2
    done
done

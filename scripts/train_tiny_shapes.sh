#!/usr/bin/env bash
# Retrain the embedded tiny-shapes model from scratch on 2 CPU cores, with fixed seeds:
# tokenizer + tiny CLIP (contrastive), VAE, then the U-Net with `python -m ldm_lightning fit`.
# Usage: scripts/train_tiny_shapes.sh [BUILD_DIR] [--install]   (--install copies the result into the package)
# WORLD=scenes trains on scenes of one to four shapes at 96² (ldm_lightning/shapes/scene.py) instead of one shape at 64².
set -euo pipefail
WORLD=${WORLD:-shapes}
BUILD=${1:-build/tiny-shapes}
CLIP_STEPS=${CLIP_STEPS:-900}
VAE_STEPS=${VAE_STEPS:-600}
UNET_STEPS=${UNET_STEPS:-3600}
# Share of each CLIP batch in position-twin pairs; 0 trains a CLIP that ignores position (docs/results/tiny-shapes-position.md).
CLIP_P_TWINS=${CLIP_P_TWINS:-0.5}
mkdir -p "$BUILD"
t0=$(date +%s)
# CLIP and VAE are independent: one thread each, side by side.
python -m ldm_lightning.shapes.clip --out "$BUILD/clip" --steps "$CLIP_STEPS" --p-twins "$CLIP_P_TWINS" --threads 1 --seed 0 --world "$WORLD" > "$BUILD/clip.log" 2>&1 &
clip_pid=$!
python -m ldm_lightning.shapes.vae --out "$BUILD/vae" --steps "$VAE_STEPS" --batch-size 16 --threads 1 --seed 0 --world "$WORLD"
wait "$clip_pid" || { cat "$BUILD/clip.log"; exit 1; }
cat "$BUILD/clip.log"
python -m ldm_lightning.shapes.assemble --clip "$BUILD/clip" --vae "$BUILD/vae" --out "$BUILD/init" --seed 0
python -m ldm_lightning fit --config configs/fit/tiny-shapes.yaml \
    --model.pretrained_model_name_or_path "$BUILD/init" --data.init_args.vae_from "$BUILD/init" --data.init_args.world "$WORLD" \
    --trainer.max_steps "$UNET_STEPS" --output_dir "$BUILD/fit"
MODEL=$(ls -d "$BUILD"/fit/lightning_logs/version_*/model | tail -1)
echo "trained model: $MODEL ($(( $(date +%s) - t0 )) s in all)"
if [[ "${2:-}" == "--install" ]]; then
    rm -rf ldm_lightning/assets/tiny-shapes ldm_lightning/assets/tiny-clip
    cp -r "$MODEL" ldm_lightning/assets/tiny-shapes
    # U-Net and VAE are stored in fp16 to keep the package under 20 MB; they load as fp32.
    python -c "import sys; from diffusers import UNet2DConditionModel as U; U.from_pretrained(sys.argv[1], subfolder='unet').half().save_pretrained(sys.argv[2])" \
        "$MODEL" ldm_lightning/assets/tiny-shapes/unet
    python -c "import sys; from diffusers import AutoencoderKL as V; V.from_pretrained(sys.argv[1], subfolder='vae').half().save_pretrained(sys.argv[2])" \
        "$MODEL" ldm_lightning/assets/tiny-shapes/vae
    cp -r "$BUILD/clip" ldm_lightning/assets/tiny-clip
    echo "installed into ldm_lightning/assets/"
fi

"""Keys that moved into the module's parts, each with the form that replaces it (read by the one-line parse errors)."""

_SAMPLING = ("scheduler", "num_inference_steps", "eta", "height", "width", "decode_fp32", "fast", "step_progress")
_FINETUNE = ("snr_gamma", "noise_offset", "prediction_type", "gradient_checkpointing")
_INSPECT = ("attention_factors", "attention_timesteps", "trajectory_every")

MOVED: dict[str, str] = {
    **{f"model.{k}": f"--model.sampling.{k}" for k in _SAMPLING},
    **{f"model.{k}": f"--model.finetune.{k}" for k in _FINETUNE},
    **{f"model.{k}": f"--model.inspect.{k}" for k in _INSPECT},
    "model.guidance_scale": "--model.guidance.guidance_scale",
    "model.learning_rate": "--optimizer.lr (the config files set --optimizer AdamW)",
    "model.warmup_steps": "--lr_scheduler.warmup_steps (the config files set --lr_scheduler WarmupCosine)",
    "model.lr_schedule": "--lr_scheduler.decay (the config files set --lr_scheduler WarmupCosine)",
    "model.lora_rank": "--model.finetune LoRA --model.finetune.rank N",
    "model.lora_alpha": "--model.finetune LoRA --model.finetune.alpha A",
    "model.lora_target_modules": "--model.finetune LoRA --model.finetune.target_modules '[to_q, to_v]'",
    "model.lora_scale": "--model.lora.path FILE --model.lora.scale S",
    "model.clip_model_name_or_path": "--model.metrics+=ClipScore --model.metrics.model NAME",
    "model.inception_weights": "--model.metrics+=FID --model.metrics.inception_weights FILE (KID likewise)",
    "model.dinov2_model_name_or_path": "--model.metrics+=FDDinov2 --model.metrics.model NAME",
    "model.pick_score_model": "--model.metrics+=PickScore --model.metrics.model NAME",
    "model.hpsv2_checkpoint": "--model.metrics+=HPSv2 --model.metrics.checkpoint FILE",
    "model.hpsv2_clip": "--model.metrics+=HPSv2 --model.metrics.clip NAME",
    "model.aesthetic_weights": "--model.metrics+=Aesthetic --model.metrics.weights FILE",
    "model.aesthetic_clip": "--model.metrics+=Aesthetic --model.metrics.clip NAME",
    "model.geneval_detector": "--model.metrics+=GenEval --model.metrics.detector NAME",
    "model.geneval_clip": "--model.metrics+=GenEval --model.metrics.clip NAME",
}
# Keys that stayed but take a part now: a plain value in their old form is told the new one.
RESHAPED: dict[str, str] = {
    "model.lora": "--model.lora.path FILE (and --model.lora.scale)",
    "model.inspect": "--model.inspect.views '[attention, trajectory]'",
}


def moved_message(key: str) -> str | None:
    """The one line for a key that moved, or None."""
    if key in MOVED:
        return f"{key}: moved; use {MOVED[key]}"
    if key in RESHAPED:
        return f"{key}: now a group of settings; use {RESHAPED[key]}"
    return None

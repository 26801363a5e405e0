"""Fine-tuning an SD v1 model on your own images: image–caption data, LoRA adapters."""

"""Inspection: what happens inside a generation (cross-attention maps per word, the denoising trajectory)."""

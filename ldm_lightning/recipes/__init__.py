"""Recipes that train the tiny SD-v1-shaped components (tokenizer, CLIP, VAE) on ``shapes`` data."""

"""Evaluation: CLIPScore, image features, distances to real images, summaries, statistics and run comparison."""

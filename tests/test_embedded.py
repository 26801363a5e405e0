"""The shipped tiny-shapes model: loads through the same code as SD v1.4 and draws the prompted colour."""

import torch
from helpers import manifest, pixels, run_cli

from ldm_lightning.clip_score import load_clip, score_images
from ldm_lightning.shapes.judge import judge

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple cross", "a white circle"]


def test_default_predict_draws_the_prompted_colours(tmp_path):
    args = ["predict", f"--data.prompts={PROMPTS}", f"--output_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    assert run_cli(args)[0] == 0
    rows = manifest(tmp_path)
    assert rows[0]["model"] == "tiny-shapes" and len(rows) == len(PROMPTS)
    colours = [judge(pixels(tmp_path, r).astype("uint8")).colour for r in rows]
    expected = [p.split()[1] for p in PROMPTS]
    assert sum(c == e for c, e in zip(colours, expected)) >= len(PROMPTS) - 1, list(zip(colours, expected))


def test_default_test_scores_with_the_embedded_clip(tmp_path):
    args = ["test", f"--data.prompts={PROMPTS[:3]}", f"--output_dir={tmp_path}", "--trainer.enable_progress_bar=false"]
    assert run_cli(args)[0] == 0
    rows = manifest(tmp_path, "results.jsonl")
    assert rows[0]["clip_model"] == "tiny-clip"
    # The reference is the same CLIP on the same images with each other's captions.
    images = torch.stack([torch.from_numpy(pixels(tmp_path, r).astype("uint8")).permute(2, 0, 1) for r in rows])
    captions = [r["prompt"] for r in rows]
    mismatched = score_images(images, captions[1:] + captions[:1], load_clip("tiny-clip"))
    assert all(r["clip_score"] > m + 10 for r, m in zip(rows, mismatched)), (rows, mismatched)

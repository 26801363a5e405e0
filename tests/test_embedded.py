"""The shipped tiny-shapes model: loads through the same code as SD v1.4 and draws the prompted colour and place."""

import scipy.stats
import torch
from helpers import cli_args, manifest, pixels, run_cli

from ldm_lightning.evaluation.clip_score import load_clip, score_images
from ldm_lightning.generation.components import load_components
from ldm_lightning.shapes.data import POSITION_PHRASES, POSITIONS
from ldm_lightning.shapes.evaluate import sample
from ldm_lightning.shapes.judge import judge

PROMPTS = ["a red circle", "a blue square", "a green triangle", "a yellow star", "a purple cross", "a white circle"]


def test_default_predict_draws_the_prompted_colours(tmp_path):
    args = cli_args("predict", size=None, prompts=PROMPTS, out=tmp_path)
    assert run_cli(args)[0] == 0
    rows = manifest(tmp_path)
    assert rows[0]["model"] == "tiny-shapes" and len(rows) == len(PROMPTS)
    colours = [judge(pixels(tmp_path, r).astype("uint8")).colour for r in rows]
    expected = [p.split()[1] for p in PROMPTS]
    assert sum(c == e for c, e in zip(colours, expected)) >= len(PROMPTS) - 1, list(zip(colours, expected))


def test_default_test_scores_with_the_embedded_clip(tmp_path):
    args = cli_args("test", size=None, prompts=PROMPTS[:3], out=tmp_path)
    assert run_cli(args)[0] == 0
    rows = manifest(tmp_path, "results.jsonl")
    assert rows[0]["clip_model"] == "tiny-clip"
    # The reference is the same CLIP on the same images with each other's captions.
    images = torch.stack([torch.from_numpy(pixels(tmp_path, r).astype("uint8")).permute(2, 0, 1) for r in rows])
    captions = [r["prompt"] for r in rows]
    mismatched = score_images(images, captions[1:] + captions[:1], load_clip("tiny-clip"))
    assert all(r["clip_score"] > m + 10 for r, m in zip(rows, mismatched)), (rows, mismatched)


# Two seen and two held-out colour–shape pairs, each at all five positions with the same seed, so the
# position phrase is the only thing that changes between the five images of a pair.
POSITION_PAIRS = [("red", "circle"), ("cyan", "star"), ("green", "star"), ("blue", "cross")]
# A model that ignores the position word lands in the named one of 5 places by chance, 1 in 5. The bound is
# the smallest count of 20 that chance reaches with probability below 1e-9 (binomial tail): 17.
N_POSITION_IMAGES = len(POSITION_PAIRS) * len(POSITIONS)
CHANCE = 1 / len(POSITIONS)
POSITION_BOUND = next(
    k for k in range(N_POSITION_IMAGES + 1) if scipy.stats.binom.sf(k - 1, N_POSITION_IMAGES, CHANCE) < 1e-9
)


def test_position_words_move_the_shape():
    components = load_components("tiny-shapes")
    prompts, asked = [], []
    for colour, shape in POSITION_PAIRS:
        for position in POSITIONS:
            prompts.append(f"a {colour} {shape} {POSITION_PHRASES[position][0]}")
            asked.append(position)
    seeds = [7 * (i // len(POSITIONS)) for i in range(len(prompts))]  # one seed per pair
    images, _ = sample(components, prompts, seeds, guidance=3.0)  # the evaluation's defaults: DDIM 25
    drawn = [judge(image.permute(1, 2, 0).numpy()).position for image in images]
    hits = sum(d == a for d, a in zip(drawn, asked))
    assert len(prompts) == N_POSITION_IMAGES
    assert hits >= POSITION_BOUND, list(zip(prompts, drawn))

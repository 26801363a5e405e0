"""A sampled batch as rows: one dict per image with its prompt row, its pixels and its health flags."""

from typing import Any

import torch

from ldm_lightning.generation.sampling import Samples


def prompt_rows(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch split back into its prompt rows (every column the batch carries)."""
    n = len(batch["prompt"])
    rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
    for row in rows:
        row["index"] = int(row["index"])
        row["seed"] = int(row["seed"])
        row.setdefault("negative_prompt", "")
        row["negative_prompt"] = row["negative_prompt"] or ""
    return rows


def image_rows(prompts: list[dict[str, Any]], samples: Samples, pixels: torch.Tensor) -> list[dict[str, Any]]:
    """One dict per image of a batch whose prompt rows are `prompts` (`prompt_rows`): index, prompt, negative
    prompt, seed, its uint8 (B, 3, H, W) `pixels` as an HWC array, and health flags (finite latents, not black,
    prompt truncated, its length in tokens)."""
    hwc = pixels.permute(0, 2, 3, 1).cpu().numpy()
    black = samples.images.flatten(1).amax(dim=1).cpu() < 1 / 255
    return [
        {
            "index": row["index"],
            "prompt": row["prompt"],
            "negative_prompt": row["negative_prompt"],
            "seed": row["seed"],
            "pixels": hwc[i],
            "num_tokens": int(samples.num_tokens[i]),
            "truncated": bool(samples.truncated[i]),
            "finite": bool(samples.finite[i]),
            "black": bool(black[i]),
        }
        for i, row in enumerate(prompts)
    ]


def healthy(row: dict[str, Any]) -> bool:
    """Finite latents and not a black image: the rows whose scores count."""
    return row["finite"] and not row["black"]


def with_views(rows: list[dict[str, Any]], views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Attach each image's inspection results (`inspection`, for the writer's files) and their small
    descriptions for the manifest (`attention_words`, `trajectory_steps`)."""
    for row, view in zip(rows, views):
        if not view:
            continue
        row["inspection"] = view
        if "attention" in view:
            row["attention_words"] = view["attention"]["words"]
        if "trajectory" in view:
            row["trajectory_steps"] = view["trajectory"]["steps"]
    return rows

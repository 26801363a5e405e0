"""GenEval on the embedded model, end to end on CPU: the shapes suite through `test`, judged by the pixel judge."""

import json
from pathlib import Path

import numpy as np
from helpers import METRICS, manifest, metrics_arg, run_cli
from PIL import Image

from ldm_lightning.shapes.geneval_suite import suite

SUITE = Path(__file__).parents[1] / "configs" / "prompts" / "shapes-geneval.jsonl"


def test_the_suite_file_is_the_suite():
    assert [json.loads(line) for line in SUITE.read_text().splitlines()] == suite()


def test_embedded_model_geneval_agrees_with_the_judges_table(tmp_path):
    from ldm_lightning.shapes.judge import judge

    prompts = tmp_path / "suite.jsonl"
    kept = [r for r in suite() if r["tag"] in ("single_object", "colors")]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in kept))
    geneval = {"class_path": f"{METRICS}.GenEval", "init_args": {"detector": "shapes-judge"}}
    args = [
        "test",
        "--model.sampling.num_inference_steps=10",
        f"--model.metrics={metrics_arg('clip_score', geneval)}",
        f"--data.prompts={prompts}",
        "--data.batch_size=35",
        f"--output_dir={tmp_path / 'run'}",
        "--trainer.enable_progress_bar=false",
    ]
    assert run_cli(args)[0] == 0
    rows = manifest(tmp_path / "run", "results.jsonl")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # The judge's own table: shape (and colour) of the largest shape in each image, as in shapes/evaluate.py.
    table = {"single_object": [], "colors": []}
    for r in rows:
        verdict = judge(np.asarray(Image.open(tmp_path / "run" / r["image"]).convert("RGB")))
        (clause,) = json.loads(r["geneval_metadata"])["include"]
        table[r["tag"]].append(
            verdict.shape == clause["class"] and verdict.colour == clause.get("color", verdict.colour)
        )
    for task, hits in table.items():
        # GenEval sees every shape in the image, the table only the largest: they may differ, by little.
        assert abs(summary["geneval_tasks"][task]["accuracy"] - np.mean(hits)) <= 0.07, (task, summary["geneval_tasks"])
    assert summary["geneval_tasks"]["colors"]["n"] == 30 and summary["geneval_tasks"]["single_object"]["n"] == 5

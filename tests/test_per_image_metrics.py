"""`test` with the per-image metrics: PickScore, aesthetic and GenEval columns in results.jsonl, their means in
summary.json and groups, several images per prompt, and `compare --metric pick_score` on two runs."""

import json

import numpy as np
import torch
import torch.nn.functional as F
from helpers import METRICS, manifest, metrics_arg, run_cli
from PIL import Image
from test_preference import _openclip_image, _openclip_text, hps_files  # noqa: F401 (a fixture)

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)  # OpenAI CLIP (Radford et al. 2021)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
METADATA = [
    {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
    {
        "tag": "colors",
        "include": [{"class": "square", "count": 1, "color": "red"}],
        "prompt": "a photo of a red square",
    },
]


def _metric(name: str, **settings) -> dict:
    return {"class_path": f"{METRICS}.{name}", "init_args": {k: str(v) for k, v in settings.items()}}


def _args(model, clip, prompts, head, out, guidance="3.0", hps=None):
    metrics = metrics_arg(
        _metric("PickScore", model=clip),
        _metric("HPSv2", checkpoint=hps[0], clip=hps[1]),
        _metric("Aesthetic", weights=head, clip=clip),
        _metric("GenEval", detector="shapes-judge"),
        clip=clip,
    )
    return [
        "test",
        f"--model.pretrained_model_name_or_path={model}",
        "--model.sampling.num_inference_steps=2",
        "--model.sampling.height=32",
        "--model.sampling.width=32",
        f"--model.guidance.guidance_scale={guidance}",
        f"--model.metrics={metrics}",
        f"--data.prompts={prompts}",
        "--data.images_per_prompt=2",
        "--data.group_by=[tag]",
        "--data.batch_size=3",
        f"--output_dir={out}",
        "--trainer.enable_progress_bar=false",
    ]


def test_per_image_metrics_in_results_summary_and_compare(tiny_model, tiny_clip, hps_files, tmp_path):  # noqa: F811
    from transformers import CLIPModel, CLIPTokenizer

    from ldm_lightning.evaluation.compare import compare
    from ldm_lightning.evaluation.geneval import judge
    from ldm_lightning.shapes.geneval_detector import image_detections, judge_colours

    prompts = tmp_path / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in METADATA))
    torch.manual_seed(0)
    sizes = [(32, 1024), (1024, 128), (128, 64), (64, 16), (16, 1)]
    head = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), sizes):
        head[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in) / fan_in**0.5
        head[f"layers.{index}.bias"] = torch.randn(fan_out)
    torch.save(head, tmp_path / "head.pth")

    assert run_cli(_args(tiny_model, tiny_clip, prompts, tmp_path / "head.pth", tmp_path / "a", hps=hps_files))[0] == 0
    rows = manifest(tmp_path / "a", "results.jsonl")
    assert [(r["index"], r["prompt_index"], r["sample"], r["seed"]) for r in rows] == [
        (0, 0, 0, 0), (1, 0, 1, 1), (2, 1, 0, 2), (3, 1, 1, 3)
    ]  # fmt: skip

    model, tokenizer = CLIPModel.from_pretrained(tiny_clip).eval(), CLIPTokenizer.from_pretrained(tiny_clip)
    for r in rows:
        image = np.asarray(Image.open(tmp_path / "a" / r["image"]).convert("RGB"))
        pixels = (torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float() / 255 - MEAN) / STD  # 32²: no resize
        with torch.no_grad():
            img = F.normalize(model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1)
            ids = torch.tensor([tokenizer(r["prompt"])["input_ids"]])
            txt = F.normalize(model.text_projection(model.text_model(input_ids=ids).pooler_output), dim=-1)
            pick = float(model.logit_scale.exp() * (img * txt).sum())
            state = hps_files[2]
            hps_img = F.normalize(_openclip_image(state, pixels), dim=-1)
            hps = float(100 * (hps_img * F.normalize(_openclip_text(state, ids), dim=-1)).sum())
            x = img
            for index in (0, 2, 4, 6, 7):
                x = x @ head[f"layers.{index}.weight"].T + head[f"layers.{index}.bias"]
        assert abs(r["pick_score"] - pick) <= 1e-4 and abs(r["aesthetic"] - float(x)) <= 1e-4
        assert abs(r["hpsv2"] - hps) <= 1e-4 and r["hpsv2_version"] == "unknown"  # hps.pt: not a published name
        verdict = judge(image, image_detections(image), json.loads(r["geneval_metadata"]), judge_colours)
        assert r["geneval"] == float(verdict.correct) and r["geneval_reason"] == verdict.reason
        assert r["geneval_detector_input"] == "32x32"  # the pixel judge sees the image as it is

    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert abs(summary["pick_score_mean"] - np.mean([r["pick_score"] for r in rows])) <= 1e-9
    assert summary["aesthetic_n"] == 4 and summary["geneval_n"] == 4
    tasks = summary["geneval_tasks"]
    assert tasks["single_object"]["accuracy"] == np.mean([r["geneval"] for r in rows[:2]])
    assert summary["geneval_overall"] == np.mean([tasks["single_object"]["accuracy"], tasks["colors"]["accuracy"]])
    assert set(summary["groups"]["tag"]) == {"single_object", "colors"}
    assert "pick_score" in summary["groups"]["tag"]["colors"]
    # Per prompt: the mean over prompts of each prompt's mean over its two images, from results.jsonl by hand.
    assert summary["n_prompts"] == 2
    for metric in ("clip_score", "pick_score", "hpsv2", "aesthetic", "geneval"):
        by_prompt = [np.mean([r[metric] for r in rows if r["prompt_index"] == p]) for p in (0, 1)]
        assert abs(summary[f"{metric}_prompt_mean"] - np.mean(by_prompt)) <= 1e-9
        assert summary[f"{metric}_prompt_n"] == 2
        colors = summary["groups"]["tag"]["colors"][f"{metric}_per_prompt"]
        assert colors["n"] == 1 and abs(colors["mean"] - by_prompt[1]) <= 1e-9

    assert (
        run_cli(_args(tiny_model, tiny_clip, prompts, tmp_path / "head.pth", tmp_path / "b", "1.0", hps_files))[0] == 0
    )
    report, _ = compare([tmp_path / "a", tmp_path / "b"], "pick_score")
    other = manifest(tmp_path / "b", "results.jsonl")
    (pairing,) = report["pairs"]
    expected = np.mean([b["pick_score"] - a["pick_score"] for a, b in zip(rows, other)])
    assert pairing["n"] == 4 and abs(pairing["mean_diff"] - expected) <= 1e-9


def test_geneval_needs_geneval_prompts_and_named_weight_files(tiny_model, tiny_clip, tmp_path, capsys):
    args = ["test", f"--model.pretrained_model_name_or_path={tiny_model}"]
    geneval = metrics_arg(_metric("GenEval", detector="shapes-judge"), clip=tiny_clip)
    code, err = run_cli([*args, f"--model.metrics={geneval}", f"--output_dir={tmp_path / 'a'}"], capsys)
    assert code != 0 and "data.prompts: model.metrics geneval needs GenEval metadata per prompt" in err
    hpsv2 = metrics_arg("hpsv2", clip=tiny_clip)
    code, err = run_cli([*args, f"--model.metrics={hpsv2}", f"--output_dir={tmp_path / 'b'}"], capsys)
    assert code != 0 and "model.metrics: hpsv2 needs its checkpoint file" in err


def test_one_clip_per_name_serves_clipscore_aesthetic_and_genevals_colours(tiny_clip, tmp_path):
    from ldm_lightning.evaluation.metrics import Aesthetic, ClipScore, GenEval
    from ldm_lightning.evaluation.scoring import Scoring
    from ldm_lightning.testing import build_tiny_aesthetic

    head = build_tiny_aesthetic(tmp_path / "head.pth", embed_dim=32)
    metrics = [
        ClipScore(model=tiny_clip),
        Aesthetic(weights=str(head), clip=tiny_clip),
        GenEval(detector="shapes-judge", clip=tiny_clip),
    ]
    scoring = Scoring(metrics, default_clip="tiny-clip")
    scoring.load()
    scoring_clip = scoring.networks.clip(tiny_clip)[0].model
    assert metrics[1]._scorer.clip.model is scoring_clip
    assert metrics[2]._colours.clip.model is scoring_clip
    assert scoring.networks.modules() == [scoring_clip]
    del scoring, metrics, scoring_clip

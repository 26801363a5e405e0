"""`test`: per-sample CLIPScore equal to torchmetrics' on the saved PNGs, exactly once under DDP, resumable."""

import json
import logging
from pathlib import Path

import numpy as np
import torch
from helpers import cli_args, manifest, run_cli
from PIL import Image
from torchmetrics.functional.multimodal import clip_score
from transformers import AutoProcessor, CLIPModel

PROMPTS = '["a red circle", "a blue square", "a green star", "a red cross", "' + "a long prompt " * 30 + '"]'


def eval_args(model: str, clip: str, out: Path, *extra: str) -> list[str]:
    return cli_args("test", *extra, model=model, clip=clip, steps=3, prompts=PROMPTS, batch_size=2, out=out)


class _TensorFeatures(torch.nn.Module):
    """Independent of the package's adapter: transformers 5 returns output objects, torchmetrics wants tensors."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config = model, model.config

    def get_image_features(self, pixel_values):
        return self.model.get_image_features(pixel_values=pixel_values).pooler_output

    def get_text_features(self, input_ids, attention_mask):
        return self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output


def test_scores_equal_torchmetrics_on_the_saved_pngs(tiny_model, tiny_clip, tmp_path):
    assert run_cli(eval_args(tiny_model, tiny_clip, tmp_path / "run"))[0] == 0
    rows = manifest(tmp_path / "run", "results.jsonl")
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    model = _TensorFeatures(CLIPModel.from_pretrained(tiny_clip))
    processor = AutoProcessor.from_pretrained(tiny_clip)
    for r in rows[:4]:  # short prompts: no truncation question
        png = torch.from_numpy(np.asarray(Image.open(tmp_path / "run" / r["image"]).convert("RGB"))).permute(2, 0, 1)
        with torch.no_grad():
            expected = float(clip_score(png, r["prompt"], model_name_or_path=lambda: (model, processor)))
        assert abs(r["clip_score"] - expected) <= 1e-3
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n"] == 5 and summary["n_truncated"] == 1
    assert abs(summary["clip_score_mean"] - np.mean([r["clip_score"] for r in rows])) <= 1e-6
    assert rows[4]["truncated"] and not rows[0]["truncated"]
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_long_prompt_truncation_keeps_the_end_token(tiny_model):
    from ldm_lightning.generation.components import load_components
    from ldm_lightning.generation.sampling import tokenize

    tokenizer = load_components(tiny_model).tokenizer
    ids, lengths, truncated = tokenize(tokenizer, ["word " * 100, "short"])
    assert ids.shape[1] == tokenizer.model_max_length
    assert ids[0, -1].item() == tokenizer.eos_token_id and ids[0, 0].item() == tokenizer.bos_token_id
    assert truncated.tolist() == [True, False] and lengths[0] > tokenizer.model_max_length


def test_console_and_tensorboard_show_what_the_user_needs(tiny_model, tiny_clip, tmp_path, caplog):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    with caplog.at_level(logging.INFO):
        assert run_cli(eval_args(tiny_model, tiny_clip, tmp_path / "run"))[0] == 0
    messages = [r.getMessage() for r in caplog.records]
    assert any("images in" in m for m in messages)  # where the outputs went
    assert not any("Tip:" in m for m in messages)  # no advertising
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    [session] = [
        plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        for content in events.PluginTagToContent("hparams").values()
        if plugin_data_pb2.HParamsPluginData.FromString(content).HasField("session_start_info")
    ]
    names = set(session.hparams)
    assert {"weights", "sampler", "guidance_scale", "precision", "size", "prompts", "test_clip"} <= names
    assert session.hparams["sampler"].string_value == "ddim, 3 steps"
    assert not names & {"_instantiator", "learning_rate", "warmup_steps", "snr_gamma", "batch_size"}

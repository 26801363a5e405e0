"""Inspection through the module and the command line: the same images, and the files and TensorBoard entries."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli_args, manifest, run_cli
from PIL import Image
from test_sampling import NEGATIVES, PROMPTS, SEEDS, batch_of, configure, reference

from ldm_lightning.errors import UserError
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.inspection.batch import Inspection
from ldm_lightning.module import LatentDiffusionModule

BOTH = ["attention", "trajectory"]


@pytest.mark.parametrize("name", ["ddim", "euler_ancestral", "dpmpp_2m_karras"])
def test_images_with_inspection_match_the_reference_pipeline(tiny_module, name):
    configure(tiny_module, name, 4.0, eta=0.5)
    tiny_module.inspect = Inspection(views=BOTH, trajectory_every=2)
    samples, views = tiny_module.sample(batch_of(PROMPTS, NEGATIVES, SEEDS))
    ref = reference(tiny_module, name, guidance_scale=4.0, eta=0.5)
    assert (samples.images - ref).abs().max().item() <= 1e-5
    assert all(set(view) == set(BOTH) for view in views)


def test_images_with_inspection_do_not_depend_on_batch_size(tiny_module):
    configure(tiny_module, "euler_ancestral", 3.0)
    tiny_module.inspect = Inspection(views=BOTH)
    together, views = tiny_module.sample(batch_of(PROMPTS, NEGATIVES, SEEDS))
    for i, (p, n, s) in enumerate(zip(PROMPTS, NEGATIVES, SEEDS)):
        alone, alone_views = tiny_module.sample(batch_of([p], [n], [s]))
        assert (together.images[i] - alone.images[0]).abs().max().item() <= 1e-5
        assert np.allclose(views[i]["attention"]["maps"], alone_views[0]["attention"]["maps"], atol=1e-3)


def test_predict_writes_maps_and_trajectories_beside_each_image(tiny_model, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    prompts = ["a red circle", "blue square"]
    inspect = ["--model.inspect.views=[attention, trajectory]", "--model.inspect.trajectory_every=2"]
    args = cli_args("predict", *inspect, model=tiny_model, steps=4, prompts=json.dumps(prompts), batch_size=2, out=out)
    assert run_cli(args)[0] == 0
    rows = manifest(out)
    assert [r["attention_words"] for r in rows] == [["a", "red", "circle"], ["blue", "square"]]
    assert all(r["trajectory_steps"] == [2, 4] for r in rows)
    for row, prompt in zip(rows, prompts):
        stem = out / row["image"].removesuffix(".png")
        image = np.asarray(Image.open(out / row["image"]).convert("RGB"))
        with np.load(f"{stem}.attention.npz") as saved:
            assert list(saved["words"]) == row["attention_words"]
            assert saved["maps"].shape == (len(row["attention_words"]), 32, 32)
            assert saved["maps"].min() >= 0 and np.allclose(saved["maps"].max(axis=(1, 2)), 1, atol=1e-3)
            tokens = saved["tokens_2"]
            assert tokens.shape == (32, 8, 8)  # the tiny tokenizer's 32 positions at the 8² layer
            # Token positions: the start token, then one per byte of each word; the rest is end/padding.
            owners = saved["word_of_token"]
            assert owners[0] == -1 and (owners[1 + len(prompt.replace(" ", "")) :] == -1).all()
            np.testing.assert_allclose(tokens.sum(axis=0), saved["counts"][0], rtol=1e-5)
        overlay = Image.open(f"{stem}.attention.png")
        assert overlay.width == 128 * (1 + len(row["attention_words"]))
        strip = np.asarray(Image.open(f"{stem}.trajectory.png").convert("RGB"))
        assert strip.shape == (32, 2 * 32, 3)
        assert np.array_equal(strip[:, -32:], image)  # the last frame is the output image
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    tags = set(events.Tags()["images"])
    for row in rows:
        stem = row["image"].removesuffix(".png")
        assert {f"attention/{stem}", f"trajectory/{stem}"} <= tags
        assert [e.step for e in events.Images(f"trajectory/{stem}")] == [2, 4]
    # The grid's prompt list names each row by the index its file starts with (Markdown would renumber "1.").
    [text] = events.Tensors("samples/prompts/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "`00000` a red circle  \n`00001` blue square"


def test_inspection_settings_are_checked(tiny_model):
    with pytest.raises(UserError, match="model.inspect.views: unknown"):
        LatentDiffusionModule(tiny_model, inspect=Inspection(views=["saliency"]))
    with pytest.raises(UserError, match="model.inspect: .*fast"):
        LatentDiffusionModule(tiny_model, inspect=Inspection(views=["attention"]), sampling=Sampling(fast=True))
    with pytest.raises(UserError, match=r"model.inspect.attention_factors: .*\[2\]"):
        LatentDiffusionModule(tiny_model, inspect=Inspection(views=["attention"], attention_factors=[1]))
    with pytest.raises(UserError, match="model.inspect.trajectory_every"):
        LatentDiffusionModule(tiny_model, inspect=Inspection(trajectory_every=0))
    with pytest.raises(UserError, match="model.inspect.attention_timesteps"):
        LatentDiffusionModule(tiny_model, inspect=Inspection(attention_timesteps=(900, 100)))


def test_settings_name_the_inspection_only_when_on(tiny_module):
    assert tiny_module.run_settings("32-true", "predict")["inspect"] is None
    tiny_module.inspect = Inspection(views=["attention"], attention_factors=[2])
    assert tiny_module.run_settings("32-true", "predict")["inspect"] == "attention (factors 2, timesteps all)"
    assert torch.is_tensor(tiny_module.sample(batch_of(PROMPTS[:1], NEGATIVES[:1], SEEDS[:1]))[0].images)


def test_written_rows_keep_no_inspection_arrays(tiny_module):
    """Once written, a row keeps only manifest fields, so memory stays flat however many images a run makes."""
    from ldm_lightning.run_folder.writer import drop_pixels

    tiny_module.inspect = Inspection(views=BOTH)
    rows = tiny_module.predict_step(batch_of(PROMPTS[:2], NEGATIVES[:2], SEEDS[:2]), 0)
    assert all("inspection" in r for r in rows)
    drop_pixels(rows)
    assert not any("inspection" in r or "pixels" in r for r in rows)
    assert rows[0]["attention_words"] == ["a", "red", "circle"]


@pytest.mark.ddp
def test_two_ddp_processes_with_inspection_equal_one_without(tiny_model, tmp_path):
    from helpers import pixels, run_cli_subprocess
    from test_cli import predict_args

    assert run_cli(predict_args(tiny_model, tmp_path / "one", "--data.batch_size=2"))[0] == 0
    two = run_cli_subprocess(
        predict_args(
            tiny_model,
            tmp_path / "two",
            "--data.batch_size=2",
            "--model.inspect.views=[attention, trajectory]",
            "--config=configs/devices/ddp-cpu-2.yaml",
        ),
        timeout=300,  # two processes start in seconds on idle cores, far slower on busy ones
    )
    assert two.returncode == 0, two.stderr[-2000:]
    rows_one, rows_two = manifest(tmp_path / "one"), manifest(tmp_path / "two")
    assert [r["index"] for r in rows_two] == [0, 1, 2, 3, 4]  # each prompt once, on one of the two ranks
    assert [r["image"] for r in rows_one] == [r["image"] for r in rows_two]
    for a, b in zip(rows_one, rows_two):
        assert np.abs(pixels(tmp_path / "one", a) - pixels(tmp_path / "two", b)).max() <= 1
        stem = b["image"].removesuffix(".png")
        for suffix in (".attention.npz", ".attention.png", ".trajectory.png"):
            assert (tmp_path / "two" / f"{stem}{suffix}").is_file()


def test_test_stage_scores_the_same_images_and_writes_the_maps(tiny_model, tiny_clip, tmp_path):
    from test_evaluate import eval_args

    assert run_cli(eval_args(tiny_model, tiny_clip, tmp_path / "plain"))[0] == 0
    assert (
        run_cli(eval_args(tiny_model, tiny_clip, tmp_path / "inspected", "--model.inspect.views=[attention]"))[0] == 0
    )
    plain, inspected = manifest(tmp_path / "plain", "results.jsonl"), manifest(tmp_path / "inspected", "results.jsonl")
    assert [r["clip_score"] for r in plain] == [r["clip_score"] for r in inspected]
    for row in inspected:
        stem = tmp_path / "inspected" / row["image"].removesuffix(".png")
        assert Path(f"{stem}.attention.npz").is_file() and not Path(f"{stem}.trajectory.png").exists()

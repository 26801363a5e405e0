"""The command line end to end: files, manifest, parity of the PNGs, resume, DDP, configs and errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import cli_args, manifest, pixels, run_cli, run_cli_subprocess

from ldm_lightning.testing import reference_pipeline

CONFIGS = sorted(Path(__file__).parents[1].glob("configs/**/*.yaml"))
PROMPTS = '["a red circle", "../../etc/passwd", "ünïcode 猫 / slash", "a green star", "' + "very long " * 40 + '"]'


def predict_args(model: str, out: Path, *extra: str) -> list[str]:
    return cli_args("predict", *extra, model=model, steps=3, prompts=PROMPTS, out=out)


def test_predict_writes_images_and_manifest_equal_to_the_pipeline(tiny_model, tmp_path):
    code, _ = run_cli(predict_args(tiny_model, tmp_path / "run", "--data.batch_size=2"))
    assert code == 0
    rows = manifest(tmp_path / "run")
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    for r in rows:  # names stay inside the folder, whatever the prompt
        assert "/" not in r["image"] and not r["image"].startswith(".")
        assert (tmp_path / "run" / r["image"]).is_file()
    assert {"prompt", "negative_prompt", "seed", "scheduler", "num_inference_steps", "guidance_scale"} <= set(rows[0])
    assert rows[4]["truncated"] and rows[4]["num_tokens"] > 32
    assert (tmp_path / "run" / "grid.png").is_file()

    from ldm_lightning.generation.components import load_components

    components = load_components(tiny_model)
    pipe = reference_pipeline(components, "ddim")
    for r in rows[:2]:
        ref = pipe(
            r["prompt"],
            generator=torch.Generator("cpu").manual_seed(r["seed"]),
            num_inference_steps=3,
            guidance_scale=3.0,
            height=32,
            width=32,
            output_type="np",
        ).images[0]
        ref8 = (ref * 255).round().astype(np.int16)
        assert np.abs(pixels(tmp_path / "run", r) - ref8).max() <= 1  # one 8-bit level of rounding


def test_same_run_resumes_and_a_changed_one_gets_a_new_folder(tiny_model, tmp_path):
    out = tmp_path / "run"
    assert run_cli(predict_args(tiny_model, out))[0] == 0
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name != "grid.png"}
    assert run_cli(predict_args(tiny_model, out))[0] == 0  # same config: nothing redone
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png") if p.name != "grid.png"} == first
    assert len(manifest(out)) == 5
    assert run_cli(predict_args(tiny_model, out, "--model.guidance.guidance_scale=5"))[0] == 0
    assert len(manifest(tmp_path / "run-1")) == 5  # the old run is untouched
    assert {r["guidance_scale"] for r in manifest(out)} == {3.0}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_every_config_parses_to_its_own_values(config, capsys):
    subcommand = "fit" if config.parent.name == "fit" else "predict"
    code, _ = run_cli([subcommand, f"--config={config}", "--print_config"])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    given = yaml.safe_load(config.read_text())
    assert_holds(printed, given, "")  # every value the file sets reaches the parsed config unchanged


def assert_holds(printed, given, where: str) -> None:
    """Each value of `given` (a YAML file's) is in `printed` (the parsed config) at the same key.

    A class given by `class_path` may print its arguments under `init_args`.
    """
    if isinstance(given, dict):
        assert isinstance(printed, dict), where
        for key, value in given.items():
            inside = printed if key in printed else printed.get("init_args", {})
            assert key in inside, f"{where}.{key} is missing from the parsed config"
            assert_holds(inside[key], value, f"{where}.{key}")
    elif isinstance(given, list):
        assert isinstance(printed, list) and len(printed) == len(given), where
        for i, (p, g) in enumerate(zip(printed, given)):
            assert_holds(p, g, f"{where}[{i}]")
    else:
        assert printed == given, f"{where}: {printed!r} != {given!r}"


def test_help(capsys):
    assert run_cli(["predict", "--help"])[0] == 0
    out = capsys.readouterr().out
    assert "--model.guidance" in out and "guidance_scale" in out and "--output_dir" in out
    assert "--model.sampling" in out and "ClassifierFreeGuidance" in out
    assert run_cli(["predict", "--model.guidance.help", "ClassifierFreeGuidance"])[0] == 0
    out = capsys.readouterr().out
    assert "--model.guidance.guidance_scale" in out and "Classifier-free guidance" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model.sampling.height=31"], "model.sampling.height: 31 is not a multiple of 2"),
        (["--data.prompts=[]"], "data.prompts: no prompts found"),
        (["--data.prompts=missing.txt"], "data.prompts: no prompt file at 'missing.txt'"),
        (["--model.pretrained_model_name_or_path=/nowhere/sd"], "/nowhere/sd: no such folder"),
        (["--model.sampling.scheduler=magic"], "dpmpp_2m_karras"),
        (
            ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"],
            "use `--trainer.strategy ddp`",
        ),
    ],
)
def test_bad_input_gives_one_clear_message(tiny_model, tmp_path, capsys, args, message):
    code, err = run_cli(predict_args(tiny_model, tmp_path / "run", *args), capsys)
    assert code == 2
    # (Stale logging handlers of earlier in-process runs may print their own noise before this.)
    ours = err[err.rindex("error:") :]
    assert message in ours
    assert "Traceback" not in ours


@pytest.mark.ddp
def test_fewer_prompts_than_ranks_does_not_hang(tiny_model, tmp_path):
    args = predict_args(tiny_model, tmp_path / "run", "--config=configs/devices/ddp-cpu-2.yaml")
    args[args.index(f"--data.prompts={PROMPTS}")] = '--data.prompts=["just one prompt"]'
    done = run_cli_subprocess(args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["index"] for r in manifest(tmp_path / "run")] == [0]


def test_fast_mode_draws_the_same_images(tiny_model, tmp_path, monkeypatch):
    # Through Inductor itself, as users run it (other tests of fast mode skip its code generation).
    import ldm_lightning.generation.fast
    from ldm_lightning.generation.fast import make_fast

    made_fast = []  # the U-Nets fast mode was applied to, to check it really compiled
    monkeypatch.setattr(
        ldm_lightning.generation.fast, "make_fast", lambda unet: (made_fast.append(unet), make_fast(unet))[1]
    )
    exact, fast = tmp_path / "exact", tmp_path / "fast"
    assert run_cli(predict_args(tiny_model, exact, "--data.batch_size=5"))[0] == 0
    assert run_cli(predict_args(tiny_model, fast, "--data.batch_size=5", "--model.sampling.fast=true"))[0] == 0
    assert len(made_fast) == 1 and made_fast[0]._compiled_call_impl is not None
    rows = manifest(fast)
    assert [r["index"] for r in rows] == [0, 1, 2, 3, 4]
    for r, e in zip(rows, manifest(exact)):
        assert np.abs(pixels(fast, r) - pixels(exact, e)).max() <= 1  # compiled kernels round differently


def test_fast_mode_is_applied_after_lightning_places_the_model(tiny_model, tmp_path, monkeypatch):
    import ldm_lightning.generation.fast

    seen = []  # the U-Net's dtype when fast mode is applied
    monkeypatch.setattr(
        ldm_lightning.generation.fast, "make_fast", lambda unet: seen.append(next(unet.parameters()).dtype)
    )
    args = predict_args(tiny_model, tmp_path / "run", "--model.sampling.fast=true", "--trainer.precision=bf16-true")
    assert run_cli(args)[0] == 0
    assert seen == [torch.bfloat16]  # once, after the Trainer cast (and moved) the module: CUDA graphs need it there

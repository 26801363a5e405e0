"""Every mistake a user can make on the command line ends in one `error: <key or file>: …` line, exit code 2.

One table: the arguments of a mistaken run and the key or file its message must name. Each row runs
the real CLI in this process and checks: exit code 2, no traceback, one line that names the key or
file, and nothing written to the output folder.
"""

import shutil
from pathlib import Path

import pytest
import torch
from helpers import cli_args, run_cli

D = "{d}"  # the folder of the mistaken inputs built below
BIG = 8 * 100_000  # pixels per side: a 100,000² latent, more memory than any machine has

CASES = [
    # sizes
    ("height-zero", ["--model.sampling.height=0"], "model.sampling.height"),
    ("width-negative", ["--model.sampling.width=-8"], "model.sampling.width"),
    ("height-not-multiple", ["--model.sampling.height=31"], "model.sampling.height: 31 is not a multiple"),
    ("height-not-a-number", ["--model.sampling.height=abc"], "model.sampling.height"),
    (
        "size-beyond-memory",
        [f"--model.sampling.height={BIG}", f"--model.sampling.width={BIG}"],
        "model.sampling.height/width",
    ),
    # steps, guidance, eta
    ("steps-zero", ["--model.sampling.num_inference_steps=0"], "model.sampling.num_inference_steps"),
    (
        "steps-beyond-training",
        ["--model.sampling.num_inference_steps=1001"],
        "model.sampling.num_inference_steps: 1001 is",
    ),
    ("steps-fractional", ["--model.sampling.num_inference_steps=2.5"], "model.sampling.num_inference_steps"),
    ("guidance-negative", ["--model.guidance.guidance_scale=-1"], "model.guidance.guidance_scale"),
    ("guidance-nan", ["--model.guidance.guidance_scale=nan"], "model.guidance.guidance_scale"),
    ("guidance-inf", ["--model.guidance.guidance_scale=inf"], "model.guidance.guidance_scale"),
    ("guidance-nan-in-yaml", [f"--config={D}/nan.yaml"], "model.guidance.guidance_scale"),
    ("eta-above-one", ["--model.sampling.eta=2"], "model.sampling.eta"),
    ("eta-negative", ["--model.sampling.eta=-0.1"], "model.sampling.eta"),
    ("scheduler-unknown", ["--model.sampling.scheduler=magic"], "model.sampling.scheduler"),
    # batch size, workers, limit
    ("batch-zero", ["--data.batch_size=0"], "data.batch_size"),
    ("batch-negative", ["--data.batch_size=-3"], "data.batch_size"),
    ("workers-negative", ["--data.num_workers=-1"], "data.num_workers"),
    ("limit-zero", ["--data.limit=0"], "data.limit"),
    ("limit-negative", ["--data.limit=-2"], "data.limit"),
    # seeds
    ("seed-not-integer", ["--data.seed=abc"], "data.seed"),
    ("seed-fractional", ["--data.seed=1.5"], "data.seed"),
    ("seed-beyond-64-bits", [f"--data.seed={2**64}"], "data.seed"),
    ("seed-below-64-bits", [f"--data.seed={-(2**63) - 1}"], "data.seed"),
    ("seed-overflows-with-row", [f"--data.seed={2**64 - 1}"], "data.seed"),
    ("row-seed-fractional", [f"--data.prompts={D}/seed-frac.jsonl"], "row 1"),
    ("row-seed-text", [f"--data.prompts={D}/seed-text.jsonl"], "row 0"),
    ("row-seed-beyond-64-bits", [f"--data.prompts={D}/seed-big.jsonl"], "row 0"),
    # prompt sources
    ("prompts-missing-file", [f"--data.prompts={D}/missing.txt"], "missing.txt"),
    ("prompts-empty-file", [f"--data.prompts={D}/empty.txt"], "data.prompts: no prompts"),
    ("prompts-empty-list", ["--data.prompts=[]"], "data.prompts: no prompts"),
    ("prompts-not-utf8", [f"--data.prompts={D}/latin1.txt"], "latin1.txt: not UTF-8"),
    ("prompts-malformed-jsonl-line", [f"--data.prompts={D}/bad.jsonl"], "bad.jsonl, line 2"),
    ("prompts-jsonl-not-objects", [f"--data.prompts={D}/list.jsonl"], "list.jsonl, line 1"),
    ("prompts-missing-column", [f"--data.prompts={D}/no-column.jsonl"], "no-column.jsonl' has no column"),
    ("prompts-not-text", [f"--data.prompts={D}/numbers.jsonl"], "row 0"),
    ("prompts-inline-not-text", ["--data.prompts=[1, 2]"], "data.prompts"),
    ("prompts-malformed-csv", [f"--data.prompts={D}/bad.csv"], "bad.csv"),
    ("prompts-folder-not-dataset", [f"--data.prompts={D}/not-a-dataset"], "not-a-dataset is a folder"),
    # model folders
    ("model-missing-local-path", ["--model.pretrained_model_name_or_path=/nowhere/sd"], "/nowhere/sd: no such folder"),
    ("model-hub-not-cached", ["--model.pretrained_model_name_or_path=CompVis/not-cached"], "hf download"),
    ("model-path-is-a-file", [f"--model.pretrained_model_name_or_path={D}/empty.txt"], "empty.txt: a file"),
    ("model-missing-part", [f"--model.pretrained_model_name_or_path={D}/no-unet"], "no unet/"),
    ("model-truncated-weights", [f"--model.pretrained_model_name_or_path={D}/truncated"], "unet/"),
    ("model-variant-missing", ["--model.variant=fp16"], "model.variant"),
    ("model-pickle-weights", [f"--model.pretrained_model_name_or_path={D}/pickle"], "--model.allow_pickle"),
    # scoring model (test)
    ("clip-missing", ["test", "--model.metrics+=ClipScore", f"--model.metrics.model={D}/no-clip"], "ClipScore.model"),
    (
        "clip-not-a-clip",
        ["test", "--model.metrics+=ClipScore", f"--model.metrics.model={D}/not-a-dataset"],
        "ClipScore.model",
    ),
    # trainer
    ("accelerator-missing", ["--trainer.accelerator=cuda"], "trainer.accelerator"),
    ("devices-not-a-number", ["--trainer.devices=abc"], "trainer.devices"),
    ("strategy-not-installed", ["--trainer.strategy=deepspeed"], "trainer.strategy"),
    ("strategy-spawn-on-cpu", ["--trainer.strategy=ddp_spawn", "--trainer.devices=2"], "trainer.strategy"),
    ("precision-unknown", ["--trainer.precision=17"], "trainer.precision"),
    # output folder
    ("output-is-a-file", [f"--output_dir={D}/empty.txt"], "empty.txt is a file"),
    ("output-under-a-file", [f"--output_dir={D}/empty.txt/run"], "output_dir"),
    ("output-not-writable", ["--output_dir=/sys/ldm-lightning-run"], "output_dir"),
    # config files and keys
    ("config-missing", [f"--config={D}/missing.yaml"], "missing.yaml"),
    ("config-bad-yaml", [f"--config={D}/bad.yaml"], "bad.yaml"),
    ("config-unknown-key", [f"--config={D}/unknown.yaml"], "model.colour"),
    ("cli-unknown-key", ["--model.colour=red"], "--model.colour"),
    ("cli-stray-argument", ["stray"], "stray"),
    ("config-unknown-trainer-key", [f"--config={D}/unknown-trainer.yaml"], "trainer.colour"),
    ("guidance-not-a-number", ["--model.guidance.guidance_scale=x"], "model.guidance.guidance_scale"),
    # keys that moved into the parts
    ("moved-guidance-scale", ["--model.guidance_scale=5"], "model.guidance_scale: moved; use --model.guidance"),
    ("moved-steps", ["--model.num_inference_steps=5"], "model.num_inference_steps: moved; use --model.sampling."),
    ("moved-metric-weights", ["--model.inception_weights=x.pt"], "model.inception_weights: moved; use --model.metr"),
    ("moved-lora-rank", ["--model.lora_rank=4"], "model.lora_rank: moved; use --model.finetune LoRA"),
    ("moved-in-yaml", [f"--config={D}/old.yaml"], "model.guidance_scale: moved"),
    ("reshaped-lora", ["--model.lora=x"], "model.lora: now a group of settings; use --model.lora.path"),
    ("metric-unknown", ["test", "--model.metrics=[magic]"], "model.metrics: unknown 'magic'"),
    ("guider-that-perturbs", ["--model.guidance=diffusers.guiders.SkipLayerGuidance"], "SkipLayerGuidance"),
]
HELP = "`--help` lists every key and its type"
# The whole line of each kind of parse error, as read from jsonargparse's messages (pyproject.toml pins
# the jsonargparse versions whose message formats these hold for).
WHOLE_LINES = {
    "height-not-a-number": f"model.sampling.height: expected int, got abc; {HELP}",
    "steps-fractional": f"model.sampling.num_inference_steps: expected int, got 2.5; {HELP}",
    "guidance-not-a-number": f"model.guidance.guidance_scale: expected float, got x; {HELP}",
    "scheduler-unknown": "model.sampling.scheduler: unknown scheduler 'magic'; give one of ddim, pndm, "
    "dpmpp_2m_karras, dpmpp_2m_sde_karras, unipc, euler, euler_ancestral, lms, heun, a diffusers scheduler "
    "class name (e.g. DEISMultistepScheduler) or the import path of a SchedulerMixin subclass",
    "moved-guidance-scale": "model.guidance_scale: moved; use --model.guidance.guidance_scale",
    "seed-not-integer": f"data.seed: expected int, got abc; {HELP}",
    "seed-fractional": f"data.seed: expected int, got 1.5; {HELP}",
    "prompts-inline-not-text": f"data.prompts: expected str or list[str], got [1, 2]; {HELP}",
    "precision-unknown": "trainer.precision: expected one of 64, 32, 16, transformer-engine, "
    f"transformer-engine-float16, 16-true, 16-mixed, bf16-true, bf16-mixed, 32-true, 64-true, bf16, got 17; {HELP}",
    "config-missing": f"config: file does not exist: '{D}/missing.yaml'; check the path",
    "config-bad-yaml": f"{D}/bad.yaml: not valid YAML (while parsing a flow node: did not find expected node content "
    "at line 2, column 19); fix the file",
    "config-unknown-key": f"model.colour: unknown key; {HELP}",
    "config-unknown-trainer-key": f"trainer.colour: unknown key; {HELP}",
    "cli-unknown-key": f"--model.colour: unknown key or stray argument; {HELP}",
    "cli-stray-argument": f"stray: unknown key or stray argument; {HELP}",
}
LEAKS = ("download", "hf download")  # advice that does not belong to a local mistake


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_model) -> Path:
    """Mistaken prompt files, model folders and configs, built once."""
    d = tmp_path_factory.mktemp("mistakes")
    (d / "empty.txt").write_text("\n \n")
    (d / "latin1.txt").write_bytes("a red circle\ncaf\xe9 star\n".encode("latin-1"))
    (d / "bad.jsonl").write_text('{"prompt": "a red circle"}\n{"prompt": "a blue\n')
    (d / "list.jsonl").write_text('["a red circle"]\n')
    (d / "no-column.jsonl").write_text('{"text": "a red circle"}\n')
    (d / "numbers.jsonl").write_text('{"prompt": 3}\n')
    (d / "seed-frac.jsonl").write_text('{"prompt": "a", "seed": 1}\n{"prompt": "b", "seed": 1.5}\n')
    (d / "seed-text.jsonl").write_text('{"prompt": "a", "seed": "lucky"}\n')
    (d / "seed-big.jsonl").write_text(f'{{"prompt": "a", "seed": {2**70}}}\n')
    (d / "bad.csv").write_text('prompt\n"a red circle\n')
    (d / "not-a-dataset").mkdir()
    (d / "not-a-dataset" / "notes.md").write_text("not a dataset")
    (d / "nan.yaml").write_text("model:\n  guidance:\n    init_args:\n      guidance_scale: .nan\n")
    (d / "old.yaml").write_text("model:\n  guidance_scale: 7.5\n")
    (d / "bad.yaml").write_text("model: [\n  guidance_scale: :\n")
    (d / "unknown.yaml").write_text("model:\n  colour: red\n")
    (d / "unknown-trainer.yaml").write_text("trainer:\n  colour: red\n")
    shutil.copytree(tiny_model, d / "no-unet", ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(tiny_model, d / "truncated")
    weights = d / "truncated" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    shutil.copytree(tiny_model, d / "pickle")
    from safetensors.torch import load_file

    unet = d / "pickle" / "unet"
    torch.save(load_file(unet / "diffusion_pytorch_model.safetensors"), unet / "diffusion_pytorch_model.bin")
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    return d


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_gives_one_line(case, inputs, tiny_model, tmp_path, capsys):
    name, extra, names = case
    if name == "accelerator-missing" and torch.cuda.is_available():
        pytest.skip("this machine has the accelerator")
    extra = [a.replace(D, str(inputs)) for a in extra]
    subcommand = extra.pop(0) if extra and extra[0] == "test" else "predict"
    out = tmp_path / "run"
    args = cli_args(subcommand, *extra, model=tiny_model, steps=2, prompts='["a red circle", "a blue square"]', out=out)
    code, err = run_cli(args, capsys)
    assert code == 2, err[-2000:]
    assert "Traceback" not in err
    # One line, the last: (logging handlers of earlier in-process runs may print their own lines before it).
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: "), err[-2000:]
    assert names.replace(D, str(inputs)) in message, message
    if name in WHOLE_LINES:
        assert message == "error: " + WHOLE_LINES[name].replace(D, str(inputs))
    assert ";" in message  # <what is wrong>; <what to do>
    if name.startswith(("model-", "prompts-")) and name not in ("model-variant-missing", "model-hub-not-cached"):
        assert not any(leak in message for leak in LEAKS), message
    if name != "model-pickle-weights":
        assert "allow_pickle" not in message, message
    if out.exists():  # nothing half-written: no image, manifest, temporary or run file
        assert [p for p in out.rglob("*") if p.is_file()] == []


def test_seeds_torch_accepts_are_used_as_torch_uses_them(tiny_module):
    """Negative seeds become their 64-bit equivalent (the same generator); the largest seed samples."""
    from ldm_lightning.data import collate, read_rows

    rows = read_rows(["a red circle", "a blue star"], seed=-1)
    assert [r["seed"] for r in rows] == [2**64 - 1, 0]  # -1 + row 1 = 0
    # The largest seed passes through the batch (it does not fit an int64 tensor) and draws its own noise.
    batch = collate(read_rows(["a red circle"], 2**64 - 1) + read_rows(["a red circle"], 0))
    images = tiny_module.sample(batch)[0].images
    assert images.isfinite().all() and (images[0] - images[1]).abs().max() > 0.01

"""Test helpers: running the CLI in-process and reading what it wrote."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def cli_args(
    subcommand: str | None,
    *extra: str,
    model: str | Path | None = None,
    clip: str | Path | None = None,
    steps: int | None = None,
    size: int | None = 32,
    prompts: str | Path | None = None,
    batch_size: int | None = None,
    out: str | Path | None = None,
    logger: bool = True,
) -> list[str]:
    """Arguments of `python -m ldm_lightning SUBCOMMAND …` (None: none, as a sweep's passthrough): the settings
    given, `size`×`size` pixels, no progress bar, then `extra` (later arguments override earlier ones)."""
    settings = {
        "--model.pretrained_model_name_or_path": model,
        "--model.metrics": None if clip is None else metrics_arg(clip=clip),
        "--model.sampling.num_inference_steps": steps,
        "--model.sampling.height": size,
        "--model.sampling.width": size,
        "--data.prompts": prompts,
        "--data.batch_size": batch_size,
        "--output_dir": out,
    }
    args = [] if subcommand is None else [subcommand]
    args += [f"{key}={value}" for key, value in settings.items() if value is not None]
    args.append("--trainer.enable_progress_bar=false")
    if not logger:
        args.append("--trainer.logger=false")
    return [*args, *extra]


METRICS = "ldm_lightning.evaluation.metrics"


def optimizer_args(lr: float, warmup_steps: int) -> list[str]:
    """`fit`'s optimizer as the config files give it: AdamW at `lr`, `WarmupCosine` with `warmup_steps`."""
    return [
        "--optimizer=AdamW",
        f"--optimizer.lr={lr}",
        "--lr_scheduler=ldm_lightning.finetune.method.WarmupCosine",
        f"--lr_scheduler.warmup_steps={warmup_steps}",
    ]


def metrics_arg(*metrics: str | dict, clip: str | Path | None = None) -> str:
    """The value of `--model.metrics` (JSON): built-in names or {class_path, init_args} dicts; with `clip`,
    CLIPScore scores with that CLIP (and the CLIP-feature set metrics use it too)."""
    listed = [m for m in metrics if m != "clip_score"]
    if clip is not None:
        listed.insert(0, {"class_path": f"{METRICS}.ClipScore", "init_args": {"model": str(clip)}})
    elif "clip_score" in metrics:
        listed.insert(0, "clip_score")
    return json.dumps(listed)


def run_cli(args: list[str], capsys=None) -> tuple[int, str]:
    """Run `python -m ldm_lightning ARGS` in this process; return (exit code, stderr)."""
    from ldm_lightning.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def run_module(module: str, args: list[str]) -> int:
    """Run `python -m MODULE ARGS` in this process (as its `__main__`, with `sys.argv` set); its exit code.

    A fresh process costs seconds of imports on a small machine; only DDP and killed runs need one.
    """
    import runpy
    import warnings

    argv = sys.argv
    sys.argv = [module, *args]
    try:
        with warnings.catch_warnings():  # the module may be imported already (by the test): run it again as main
            warnings.filterwarnings("ignore", "'.*' found in sys.modules", RuntimeWarning)
            runpy.run_module(module, run_name="__main__")
        return 0
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv


def run_cli_subprocess(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process (needed for DDP), killed hard if it hangs."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "ldm_lightning", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def manifest(folder: str | Path, name: str = "manifest.jsonl") -> list[dict]:
    """The rows of a run folder's manifest (or results) file."""
    lines = (Path(folder) / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def pixels(folder: str | Path, row: dict) -> np.ndarray:
    """A row's image as an int16 array (so differences do not wrap)."""
    return np.asarray(Image.open(Path(folder) / row["image"]).convert("RGB")).astype(np.int16)


def kill_after_rows(args: list[str], results: Path, rows: int = 2, timeout: float = 300) -> int:
    """Start the CLI, SIGKILL it once `results` holds `rows` rows; how many rows it had finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ldm_lightning", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + timeout
    while time.time() < deadline and len(_lines(results)) < rows:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return len(_lines(results))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def exact_wilcoxon_p(diff) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test from its exact null distribution (Wilcoxon 1945).

    Zero differences are dropped (Wilcoxon's own rule) and tied sizes share their mean rank. Under the null
    hypothesis each remaining rank carries a + or a − sign with probability 1/2, independently: all 2^n
    sign patterns are equally likely, and the p-value is twice the smaller tail of W+ (the sum of the
    positive differences' ranks) at its observed value, at most 1.
    """
    d = np.asarray(diff, dtype=np.float64)
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return 1.0
    assert n <= 20, "2^n sign patterns are enumerated"
    sizes = np.abs(d)
    ranks = np.array([(sizes < x).sum() + ((sizes == x).sum() + 1) / 2 for x in sizes])  # mean ranks of ties
    observed = ranks[d > 0].sum()
    signs = (np.arange(2**n)[:, None] >> np.arange(n)) & 1  # every pattern of + (1) and − (0)
    w_plus = signs @ ranks
    tolerance = 1e-9 * ranks.sum()
    lower, upper = np.mean(w_plus <= observed + tolerance), np.mean(w_plus >= observed - tolerance)
    return float(min(1.0, 2 * min(lower, upper)))


def quiet_trainer(**settings):
    """A one-process CPU Trainer that logs, checkpoints and prints nothing; `settings` add or override."""
    from lightning import Trainer

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return Trainer(**{**quiet, **settings})


def compile_without_codegen(monkeypatch) -> None:
    """Fast mode as it is (the U-Net captured whole by TorchDynamo, `fullgraph=True`), run by Dynamo's `eager`
    backend instead of Inductor's generated C++: the same path for what a test of modes, tables or folders checks,
    without a minute of cold C++ compilation per graph. `tests/test_cli.py` keeps one run through Inductor."""
    from ldm_lightning.generation import fast

    real = fast.fast_settings

    def settings(device):
        chosen = real(device)
        return {**chosen, "compile": {**chosen["compile"], "backend": "eager"}}

    monkeypatch.setattr(fast, "fast_settings", settings)


def diffusers_images(folder: str | Path, batch: dict, steps: int, size: int, guidance_scale: float, scheduler="ddim"):
    """`batch`'s prompts and seeds drawn by diffusers' own `StableDiffusionPipeline`, loaded from `folder` as a user
    would load it (with our sampler's scheduler, built from the folder's config): images in [0, 1], (B, 3, H, W)."""
    import torch
    from diffusers import StableDiffusionPipeline

    from ldm_lightning.generation.schedulers import build_scheduler

    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    pipe.scheduler = build_scheduler(scheduler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        batch["prompt"],
        negative_prompt=batch["negative_prompt"],
        generator=[torch.Generator("cpu").manual_seed(s) for s in batch["seed"]],
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=size,
        width=size,
        output_type="pt",
    ).images


def set_learning_rate(module, lr: float, warmup_steps: int = 100, decay: str = "cosine"):
    """`module` trained with AdamW at `lr` and `WarmupCosine(warmup_steps, decay)`, as the command line's
    `--optimizer AdamW --optimizer.lr LR --lr_scheduler WarmupCosine` would build them; returns `module`."""
    import torch

    from ldm_lightning.cli import LdmCLI
    from ldm_lightning.finetune.method import WarmupCosine

    def configure():
        trained = [p for p in module.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=lr, weight_decay=1e-2)
        return LdmCLI.configure_optimizers(module, optimizer, WarmupCosine(optimizer, warmup_steps, decay=decay))

    module.configure_optimizers = configure
    return module

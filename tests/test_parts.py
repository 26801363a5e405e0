"""The parts passed to the module: any diffusers scheduler by name, guidance methods (ours and diffusers'),
the settings read from the parts, and a data module that is nothing but prompt rows."""

import logging
import threading
import warnings

import pytest
import torch
from helpers import optimizer_args, quiet_trainer
from lightning import LightningDataModule
from torch.utils.data import DataLoader

from ldm_lightning.data import collate
from ldm_lightning.errors import UserError
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.testing import reference_pipeline

PROMPTS = ["a red circle", "a blue square", "a green star"]
NEGATIVES = ["", "blurry", ""]
SEEDS = [3, 11, 1234]
LEVEL = 1 / 255 + 1e-6  # one 8-bit level


def batch_of(start: int = 0, n: int = 3) -> dict:
    rows = [
        {"index": i, "prompt": PROMPTS[i], "negative_prompt": NEGATIVES[i], "seed": SEEDS[i]}
        for i in range(start, start + n)
    ]
    return collate(rows)


def module_on(components, **parts) -> LatentDiffusionModule:
    sampling = parts.pop("sampling", Sampling(num_inference_steps=6, height=32, width=32))
    return LatentDiffusionModule.from_components(components, sampling=sampling, **parts)


def pipeline_images(components, scheduler: str, steps: int, **call) -> torch.Tensor:
    pipe = reference_pipeline(components, scheduler)
    generators = [torch.Generator("cpu").manual_seed(s) for s in SEEDS]
    out = pipe(
        PROMPTS,
        negative_prompt=NEGATIVES,
        generator=generators,
        num_inference_steps=steps,
        height=32,
        width=32,
        output_type="pt",
        **call,
    )
    return out.images


@pytest.fixture(scope="module")
def components(tiny_model):
    from ldm_lightning.generation.components import load_components

    return load_components(tiny_model)


@pytest.mark.parametrize("name", ["DEISMultistepScheduler", "KDPM2DiscreteScheduler", "diffusers.DDPMScheduler"])
def test_a_diffusers_scheduler_outside_the_shorthands_matches_the_pipeline(components, name):
    module = module_on(components, sampling=Sampling(scheduler=name, num_inference_steps=6, height=32, width=32))
    ours = module.sample(batch_of())[0].images
    ref = pipeline_images(components, name.rpartition(".")[2], 6, guidance_scale=3.0)
    assert (ours - ref).abs().max() <= LEVEL


def test_an_unknown_scheduler_is_one_line():
    with pytest.raises(UserError, match=r"model.sampling.scheduler: unknown scheduler 'Nope'"):
        Sampling(scheduler="Nope")
    with pytest.raises(UserError, match="unknown scheduler 'torch.nn.Linear'"):
        Sampling(scheduler="torch.nn.Linear")  # importable, but not a scheduler


def test_default_guidance_is_the_cfg_formula_bit_for_bit():
    cond, uncond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    guided = ClassifierFreeGuidance(guidance_scale=3.0).combine(cond, uncond, 0, 10, torch.tensor(500))
    assert torch.equal(guided, uncond + 3.0 * (cond - uncond))  # Ho & Salimans 2022, eq. 6, as computed before


def test_default_guidance_matches_the_pipeline_at_scale_3(components):
    ours = module_on(components).sample(batch_of())[0].images
    assert (ours - pipeline_images(components, "ddim", 6, guidance_scale=3.0)).abs().max() <= 1e-5


def test_guidance_rescale_matches_the_pipeline(components):
    module = module_on(components, guidance=ClassifierFreeGuidance(guidance_scale=5.0, guidance_rescale=0.7))
    ours = module.sample(batch_of())[0].images
    ref = pipeline_images(components, "ddim", 6, guidance_scale=5.0, guidance_rescale=0.7)
    plain = pipeline_images(components, "ddim", 6, guidance_scale=5.0)
    assert (ours - ref).abs().max() <= LEVEL
    assert (ref - plain).abs().max() > 2 * LEVEL  # the rescale does change the images (≈5 levels here)


def test_apg_differs_from_cfg_and_does_not_depend_on_the_batch(components):
    from diffusers.guiders import AdaptiveProjectedGuidance

    # eta 0 drops the update's component parallel to the conditional estimate (Sadat et al. 2024). diffusers' default
    # eta 1 keeps it, and on a latent this small the update's norm stays under the rescale threshold, so it equals CFG.
    apg = module_on(
        components, guidance=AdaptiveProjectedGuidance(5.0, adaptive_projected_guidance_rescale=1.0, eta=0.0)
    )
    cfg = module_on(components, guidance=ClassifierFreeGuidance(guidance_scale=5.0))
    together = apg.sample(batch_of())[0].images
    alone = torch.cat([apg.sample(batch_of(i, 1))[0].images for i in range(3)])
    assert (together - alone).abs().max() <= LEVEL
    assert (together - cfg.sample(batch_of())[0].images).abs().max() > 2 * LEVEL


def test_apg_with_momentum_starts_each_batch_afresh(components):
    from diffusers.guiders import AdaptiveProjectedGuidance

    module = module_on(components, guidance=AdaptiveProjectedGuidance(5.0, adaptive_projected_guidance_momentum=-0.5))
    first = module.sample(batch_of())[0].images
    again = module.sample(batch_of())[0].images  # the momentum of the first batch must not leak into this one
    assert torch.equal(first, again)


def test_a_guider_that_perturbs_the_unet_is_refused_in_one_line(components):
    from diffusers.guiders import PerturbedAttentionGuidance

    with pytest.raises(UserError, match="PerturbedAttentionGuidance perturbs the denoiser's layers"):
        module_on(components, guidance=PerturbedAttentionGuidance(perturbed_guidance_layers=[0]))


def test_guidance_window_skips_the_unconditional_half_outside_it(components):
    calls = []

    class Counting(ClassifierFreeGuidance):
        def combine(self, cond, uncond, step, num_steps, timestep):
            calls.append(uncond is not None)
            return super().combine(cond, uncond, step, num_steps, timestep)

    module_on(components, guidance=Counting(guidance_scale=3.0, start=0.5)).sample(batch_of(0, 1))
    assert calls == [False, False, False, True, True, True]


def run_settings_of(module, precision="32-true"):
    return module.run_settings(precision, "predict")


def test_decode_precision_and_weights_are_in_the_settings(tiny_model, tmp_path):
    import shutil

    always = LatentDiffusionModule(tiny_model, sampling=Sampling(decode_fp32="always", height=32, width=32))
    never = LatentDiffusionModule(tiny_model, sampling=Sampling(decode_fp32="never", height=32, width=32))
    assert run_settings_of(always, "bf16-mixed") != run_settings_of(never, "bf16-mixed")
    # "auto" decodes in fp32 under the fp16 precisions only: the resolved choice is what counts
    auto = LatentDiffusionModule(tiny_model, sampling=Sampling(height=32, width=32))
    assert run_settings_of(auto, "16-mixed")["decode_fp32"] is True
    assert run_settings_of(auto, "bf16-mixed")["decode_fp32"] is False

    copy = tmp_path / "model"
    shutil.copytree(tiny_model, copy)
    before = run_settings_of(LatentDiffusionModule(str(copy)))
    unet_file = next((copy / "unet").glob("*.safetensors"))
    unet_file.write_bytes(unet_file.read_bytes())  # retrained in place: same path, new file
    after = run_settings_of(LatentDiffusionModule(str(copy)))
    assert before["weights"] != after["weights"]
    assert {k for k in before if before[k] != after[k]} == {"weights"}


def test_step_progress_is_not_in_the_settings(tiny_model):
    quiet = LatentDiffusionModule(tiny_model, sampling=Sampling(height=32, width=32))
    loud = LatentDiffusionModule(tiny_model, sampling=Sampling(height=32, width=32, step_progress=True))
    assert run_settings_of(quiet) == run_settings_of(loud)
    assert run_settings_of(quiet)["format"] == 2


class RowsOnly(LightningDataModule):
    """A plain data module over a list of dicts: no rows up front, no skip, no groups."""

    def __init__(self, rows):
        super().__init__()
        self.rows_ = rows

    def predict_dataloader(self):
        return DataLoader(self.rows_, batch_size=2, collate_fn=collate)

    def test_dataloader(self):
        return DataLoader(self.rows_, batch_size=2, collate_fn=collate)


def test_predict_and_test_work_with_any_data_module_of_prompt_rows(tiny_model, tiny_clip):
    from ldm_lightning.evaluation.metrics import ClipScore

    rows = [{"index": i, "prompt": p, "negative_prompt": "", "seed": s} for i, (p, s) in enumerate(zip(PROMPTS, SEEDS))]
    module = LatentDiffusionModule(
        tiny_model, sampling=Sampling(num_inference_steps=3, height=32, width=32), metrics=[ClipScore(tiny_clip)]
    )
    predicted = quiet_trainer().predict(module, datamodule=RowsOnly(rows))
    assert [r["index"] for batch in predicted for r in batch] == [0, 1, 2]
    scores = quiet_trainer().test(module, datamodule=RowsOnly(rows), verbose=False)[0]
    assert scores["test/n"] == 3.0


def test_building_parts_and_the_module_changes_nothing_global(tiny_model, tiny_clip):
    from transformers.utils import logging as transformers_logging

    filters_before = list(warnings.filters)
    hook_before = threading.excepthook
    bars_before = transformers_logging.is_progress_bar_enabled()
    loggers = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero", "transformers")
    logger_filters = {name: list(logging.getLogger(name).filters) for name in loggers}
    from diffusers.guiders import AdaptiveProjectedGuidance

    from ldm_lightning.evaluation.metrics import ClipScore

    module = LatentDiffusionModule(
        tiny_model,
        sampling=Sampling(num_inference_steps=2, height=32, width=32),
        guidance=AdaptiveProjectedGuidance(guidance_scale=4.0),
        metrics=[ClipScore(tiny_clip), "cmmd"],
    )
    module.scoring.load()
    assert list(warnings.filters) == filters_before
    assert threading.excepthook is hook_before
    assert transformers_logging.is_progress_bar_enabled() == bars_before
    assert {name: list(logging.getLogger(name).filters) for name in loggers} == logger_filters


def test_fit_takes_an_image_folder_as_a_user_first_types_it(tiny_model, tiny_clip, tmp_path):
    from helpers import metrics_arg, run_cli

    from ldm_lightning.shapes.folder import write_folder

    folder = write_folder(tmp_path / "my_images", [("red", "circle")], num_images=8, seed=0)
    args = [
        "fit",
        f"--model.pretrained_model_name_or_path={tiny_model}",
        f"--data.path={folder}",
        "--data.resolution=32",
        "--data.batch_size=4",
        f"--model.metrics={metrics_arg(clip=tiny_clip)}",  # validation's CLIPScore
        "--model.finetune=LoRA",
        "--model.finetune.rank=2",
        *optimizer_args(0.001, 1),
        "--trainer.max_steps=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_checkpointing=false",
        f"--output_dir={tmp_path / 'fit'}",
    ]
    assert run_cli(args)[0] == 0
    assert list((tmp_path / "fit").rglob("lora/pytorch_lora_weights.safetensors"))


def test_batch_size_resumes_the_folder_and_decode_precision_does_not(tiny_model, tmp_path, capsys):
    from helpers import manifest, run_cli

    base = [
        "predict",
        f"--model.pretrained_model_name_or_path={tiny_model}",
        "--model.sampling.num_inference_steps=2",
        "--model.sampling.height=32",
        "--model.sampling.width=32",
        "--trainer.precision=bf16-mixed",
        "--trainer.enable_progress_bar=false",
        f"--output_dir={tmp_path / 'run'}",
    ]
    assert run_cli([*base, "--data.batch_size=4", "--model.sampling.decode_fp32=never"])[0] == 0
    assert run_cli([*base, "--data.batch_size=2", "--model.sampling.decode_fp32=never"])[0] == 0
    assert not (tmp_path / "run-1").exists()  # another batch size: the same images, the same folder
    assert run_cli([*base, "--data.batch_size=4", "--model.sampling.decode_fp32=always"])[0] == 0
    assert {r["decode_fp32"] for r in manifest(tmp_path / "run-1")} == {True}
    assert {r["decode_fp32"] for r in manifest(tmp_path / "run")} == {False}


@pytest.mark.ddp  # a process of its own, with DataLoader worker processes
def test_sigterm_during_fit_with_workers_ends_in_the_stopped_line(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from ldm_lightning.shapes.folder import write_folder

    folder = write_folder(tmp_path / "imgs", [("red", "circle")], num_images=32, seed=0)
    args = [
        "fit",
        f"--data.path={folder}",
        "--data.batch_size=4",
        "--data.num_workers=2",
        "--trainer.max_steps=100000",
        "--trainer.limit_val_batches=0",
        "--trainer.enable_progress_bar=false",
        f"--output_dir={tmp_path / 'fit'}",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "ldm_lightning", *args], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((tmp_path / "fit").glob("lightning_logs/version_0")):
        time.sleep(0.2)
    time.sleep(5)  # into the training batches, workers running
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "stopped: SIGTERM received; resume from the last checkpoint" in err
    assert "Traceback" not in err


def test_words_the_embedded_tokenizer_does_not_know_are_named(tiny_model):
    from ldm_lightning.generation.components import load_components
    from ldm_lightning.generation.sampling import unknown_words

    embedded = load_components("tiny-shapes").tokenizer
    found = unknown_words(embedded, ["an orange circle", "a red square", "an orange circle"])
    assert found == {"an orange circle": ["an", "orange"]}
    assert unknown_words(load_components(tiny_model).tokenizer, ["an orange circle"]) == {}  # byte-level: knows all


def test_scorers_live_with_the_module(tiny_model, tiny_clip):
    import gc
    import weakref

    from ldm_lightning.evaluation.metrics import ClipScore, PickScore

    def loaded_then_dropped() -> list:
        module = LatentDiffusionModule(
            tiny_model, metrics=[ClipScore(tiny_clip), PickScore(model=tiny_clip), "fd_clip"]
        )
        module.scoring.load()
        shared = module.scoring.networks.clip(tiny_clip)[0]
        # one CLIP per name: CLIPScore and FD-CLIP's features use the same network
        same = module.scoring.extractors["clip"].model is shared
        return [same, weakref.ref(module.scoring.image_metrics[1]._clip.model), weakref.ref(shared)]

    same, *networks = loaded_then_dropped()
    gc.collect()
    assert same
    assert [ref() is None for ref in networks] == [True, True]  # nothing keeps them once the module is gone

"""The LightningModule: the frozen SD v1 components and the parts that use them.

It works in any `Trainer`: `trainer.predict` returns the image rows, `trainer.test` returns the scores
(`test/clip_score` and the rest), `trainer.fit` trains the U-Net. It holds the components and
orchestrates the parts passed in — `Sampling`, a guidance method, the metrics, the fine-tuning method,
`Inspection` — each a class of its own (`generation/`, `evaluation/`, `finetune/`, `inspection/`).
"""

import time
from pathlib import Path
from typing import Any

import torch
from diffusers.guiders.guider_utils import BaseGuidance
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info

from ldm_lightning.evaluation.metrics import ImageMetric, SetMetric
from ldm_lightning.evaluation.rows import FeatureRows, ResultRows
from ldm_lightning.evaluation.scoring import Scoring, resolve_metrics
from ldm_lightning.finetune.lora import LoraFile
from ldm_lightning.finetune.method import FineTuning, FullUNet, WarmupCosine, validates
from ldm_lightning.generation.components import Components, load_components
from ldm_lightning.generation.guidance import ClassifierFreeGuidance, Guidance, as_guidance
from ldm_lightning.generation.image_rows import healthy, image_rows, prompt_rows, with_views
from ldm_lightning.generation.provenance import build_part
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import report_unknown_words, to_uint8
from ldm_lightning.inspection.batch import Inspection
from ldm_lightning.interfaces import PromptSource
from ldm_lightning.memory import peak_memory_mb, release_free_heap

DEFAULT_MODEL = "tiny-shapes"
PART_KEYS = ("sampling", "guidance", "finetune", "inspect", "lora")


class LatentDiffusionModule(LightningModule):
    """Stable Diffusion v1 text-to-image in Lightning: `predict` draws, `test` scores, `fit` trains the U-Net."""

    def __init__(
        self,
        pretrained_model_name_or_path: str = DEFAULT_MODEL,
        revision: str | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        lora: LoraFile | None = None,
        sampling: Sampling | None = None,
        guidance: Guidance | BaseGuidance | None = None,
        metrics: list[ImageMetric | SetMetric | str] | None = None,
        finetune: FineTuning | None = None,
        inspect: Inspection | None = None,
    ):
        """
        Args:
            pretrained_model_name_or_path: a diffusers-format SD v1 model: hub id (e.g. CompVis/stable-diffusion-v1-4,
                cached or downloadable), local folder, or the embedded "tiny-shapes".
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. "fp16".
            allow_pickle: also load .bin (pickle) weights; only for files you trust.
            lora: a U-Net LoRA in diffusers' format to apply for predict, test and fit (`path`, `scale`).
            sampling: scheduler, steps, size, eta, decode precision (`Sampling`).
            guidance: how each step combines the conditional and unconditional estimates: `ClassifierFreeGuidance`
                (default, guidance_scale 3.0), one of `diffusers.guiders`, or your own `Guidance` subclass.
            metrics: what `test` reports besides CLIPScore (always computed): built-in names (clip_score,
                pick_score, hpsv2, aesthetic, geneval, fid, kid, cmmd, fd_dinov2, fd_clip) or metric objects
                (class path + init args: `ldm_lightning.evaluation.metrics`, or your own `ImageMetric` /
                `SetMetric`). Set metrics compare with `data.reference`'s real images.
            finetune: what `fit` trains: `FullUNet` (default) or `LoRA`, with the loss settings.
            inspect: what to record while sampling (`Inspection`: attention maps, trajectory); the images do not
                change.
        """
        super().__init__()
        self.save_hyperparameters(ignore=["metrics"])
        # A part may come as its config (`provenance.part_spec`): what a checkpoint's hyperparameters hold.
        sampling, guidance, finetune, inspect, lora = map(build_part, (sampling, guidance, finetune, inspect, lora))
        self.sampling = sampling or Sampling()
        self.guidance = as_guidance(guidance or ClassifierFreeGuidance(guidance_scale=3.0))
        self.finetune = finetune or FullUNet()
        self.inspect = inspect or Inspection()
        self.lora = lora
        default_clip = "tiny-clip" if pretrained_model_name_or_path == DEFAULT_MODEL else None
        self.scoring = Scoring(resolve_metrics(metrics), default_clip or "openai/clip-vit-large-patch14")
        self.components = self._components or load_components(
            pretrained_model_name_or_path, revision, variant, allow_pickle
        )
        # Registered as submodules so that Lightning moves and casts them.
        self.unet, self.vae, self.text_encoder = self.components.unet, self.components.vae, self.components.text_encoder
        # Sampling reads the same config, so it follows a new prediction target.
        self.components.scheduler_config = self.finetune.scheduler_config(self.components.scheduler_config)
        if lora is not None:
            lora.apply(self.unet)
        self.finetune.attach(self.unet)
        self.height, self.width = self.sampling.size(self.components)
        self.inspect.check(self.unet, self.sampling.fast)
        self.results = ResultRows(self.scoring.names)  # `test`'s rows and features, as metric state
        self.features = FeatureRows(self.scoring.feature_names)
        self.val_results = ResultRows()  # validation's CLIPScores, gathered as `test`'s are
        self.summary: dict[str, Any] | None = None  # the last `test`'s summary (see `on_test_epoch_end`)
        self._restored: tuple[list, dict] = ([], {})
        self._reference: dict[str, Any] = {}

    _components: Components | None = None

    @classmethod
    def from_components(cls, components: Components, **settings: Any) -> "LatentDiffusionModule":
        """The module on components in memory (benchmarks, notebooks), nothing loaded; `settings` as `__init__`."""
        module = cls.__new__(cls)
        object.__setattr__(module, "_components", components)  # read by __init__ instead of loading
        module.__init__(**settings)
        return module

    # ----- what changes the results -----

    def run_settings(self, precision: str, stage: str) -> dict[str, Any]:
        """Everything besides the prompt rows that changes this run's images under a Trainer of `precision`, read
        from the parts (`provenance.py`), and for `test` the metrics."""
        from ldm_lightning.generation.provenance import image_settings

        hp = self.hparams
        source = (hp.pretrained_model_name_or_path, hp.revision, hp.variant)
        parts = (self.sampling, self.guidance, self.inspect, self.finetune, self.lora)
        settings = image_settings(source, parts, (self.height, self.width), str(precision))
        if stage == "test":
            settings["clip_model"] = self.scoring.clip_name
            settings["metrics"] = self.scoring.describe()
        return settings

    def stored_features(self) -> list[str]:
        return self.scoring.feature_names

    # ----- sampling: predict, test and validation share it -----

    def sample(self, batch: dict[str, Any]):
        """The batch's images (`Samples`) and, per image, what `inspect` recorded (empty dicts when nothing)."""
        precision = str(self._trainer.precision) if self._trainer is not None else None
        decode_fp32 = self.sampling.decodes_in_fp32(precision)
        scheduler = self.sampling.new_scheduler(self.components)
        with self.inspect.watch(self.components, scheduler, list(batch["prompt"]), decode_fp32) as watch:
            samples = self.sampling.sample(
                self.components,
                self.guidance,
                batch,
                precision=precision,
                progress=self._trainer is None or self._trainer.is_global_zero,
                scheduler=scheduler,
                on_step=watch.on_step,
            )
        return samples, watch.views(samples)

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        samples, views = self.sample(batch)
        return with_views(image_rows(prompt_rows(batch), samples, to_uint8(samples.images)), views)

    def on_predict_start(self) -> None:
        self._apply_fast_mode()

    def on_predict_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        release_free_heap()  # memory stays flat over a long run (`memory.release_free_heap`)

    def _apply_fast_mode(self) -> None:
        # Here, not in `setup`: Lightning moves the module to its device and dtype after `setup`, and
        # fast mode's choices (CUDA graphs, channels-last) depend on where the U-Net lives.
        self.sampling.speed_up(self.unet)

    # ----- evaluation (test): the same samples, scored -----

    def setup(self, stage: str) -> None:
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if stage in ("predict", "test") and isinstance(datamodule, PromptSource):  # once, before any sampling
            report_unknown_words(self.components.tokenizer, [r["prompt"] for r in datamodule.load_rows()])
        if stage == "test":
            self.scoring.prepare(datamodule)
        if stage == "fit":
            from diffusers import DDPMScheduler

            self.finetune.train(self.unet)  # the frozen VAE and text encoder stay in eval mode
            # The forward process uses the checkpoint's own noise schedule (betas).
            self.noise_schedule = DDPMScheduler.from_config(self.components.scheduler_config)
        if stage in ("fit", "validate") and validates(self._trainer):
            # Now, so that a CLIP that cannot load fails before training rather than at the first validation.
            self.scoring.image_metrics[0].load(self.scoring.networks)

    def on_test_start(self) -> None:
        self._apply_fast_mode()
        self.scoring.to(self.device)
        if self.scoring.set_metrics and self.trainer.is_global_zero:
            from ldm_lightning.evaluation.reference import load_reference

            self._reference = load_reference(self.trainer.datamodule, self.scoring, self.device)

    def restore_results(self, rows: list[dict[str, Any]], features: dict[str, Any] | None = None) -> None:
        """Rows finished by an earlier, interrupted run of the same settings (a run folder's resume):
        they join this run's summary. Call before `trainer.test`; rank 0 adds them, so they count once."""
        self._restored = (rows, features or {})

    def on_test_epoch_start(self) -> None:
        self.results.reset()
        self.features.reset()
        rows, features = self._restored
        if rows and self.trainer.is_global_zero:
            self.results.update(rows)
            if self.scoring.feature_names:
                self.features.update([r["index"] for r in rows], features)
        self._restored = ([], {})

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        samples, views = self.sample(batch)
        pixels = to_uint8(samples.images)
        prompts = prompt_rows(batch)
        rows = with_views(image_rows(prompts, samples, pixels), views)
        sampled = time.perf_counter()
        features = self.scoring.score_rows(rows, pixels, prompts)
        n, memory = len(rows), peak_memory_mb(self.device)
        for row in rows:
            row["seconds"] = (time.perf_counter() - start) / n  # sampling + scoring, per image
            row["sampling_seconds"] = (sampled - start) / n
            row["first_batch"] = batch_idx == 0  # this process's first: pays warm-up and compilation
            row["peak_memory_mb"] = memory
        self.results.update(rows)
        self.features.update([r["index"] for r in rows], features)
        # Per-process, per-step values: no sync_dist here (it deadlocks when processes run different
        # numbers of steps); the scores are gathered once, at epoch end, by the metrics above.
        seconds, sampling = rows[0]["seconds"], rows[0]["sampling_seconds"]
        metrics = {"test/seconds_per_image": seconds, "test/sampling_seconds_per_image": sampling}
        metrics.update({"test/steps_per_second": self.sampling.num_inference_steps / sampling})
        self.log_dict({**metrics, "test/peak_memory_mb": memory}, on_step=True, on_epoch=False, batch_size=n)
        return rows

    def on_test_batch_end(self, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        release_free_heap()

    def on_test_epoch_end(self) -> None:
        """Gather every process's rows once and log the summary (`Scoring.summarize`): `test/<metric>` for each
        per-image mean and set metric, CLIPScore's spread and interval, `test/n`. The whole summary is
        `self.summary`."""
        from ldm_lightning.run_folder.scoreboard import log_test_run, logged_scores

        datamodule = self.trainer.datamodule
        source = datamodule if isinstance(datamodule, PromptSource) else None
        # Every row and feature to rank 0 alone, which summarizes; the other ranks get the summary.
        rows = self.results.gathered()
        generated = self.features.gathered() if self.scoring.feature_names else None
        summary = None if rows is None else self.scoring.summarize(rows, source, generated, self._reference)
        self.summary = summary = self.trainer.strategy.broadcast(summary, src=0)
        self._reference = {}
        logged = logged_scores(summary)
        # float64 tensors: Lightning would store plain floats as float32 (7 digits). The same values on every
        # process (broadcast above); the mean reduction only keeps Lightning quiet.
        self.log_dict(
            {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in logged.items()}, sync_dist=True
        )
        settings = self.run_settings(self.trainer.precision, "test")
        log_test_run(self.trainer, summary, rows or [], settings, source, logged)
        if summary["n_truncated"]:
            rank_zero_info(f"{summary['n_truncated']} prompts were longer than the tokenizer limit and were truncated.")

    # ----- validation during fit: fixed prompts and seeds, sampled and scored with `test`'s CLIPScore -----

    def on_validation_epoch_start(self) -> None:
        self.scoring.image_metrics[0].load(self.scoring.networks)
        self.val_results.reset()
        self._val_pixels: list[torch.Tensor] = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        samples, _ = self.sample(batch)
        pixels = to_uint8(samples.images)
        prompts = prompt_rows(batch)
        rows = image_rows(prompts, samples, pixels)
        scores = self.scoring.image_metrics[0].score(pixels, [p["prompt"] for p in prompts], prompts)
        for row, score in zip(rows, scores):
            row["clip_score"] = score if healthy(row) else None  # as `test_step` counts
        self.val_results.update(rows)
        self._val_pixels.append(pixels.cpu())

    def on_validation_epoch_end(self) -> None:
        """Log `val/clip_score`, the mean CLIPScore over every validation image of every process (each
        counted once, as `test` gathers them), and on rank 0 a grid of its images to TensorBoard (`val/images`)."""
        from ldm_lightning.evaluation.summary import summarize
        from ldm_lightning.run_folder.scoreboard import log_validation_images

        rows = self.val_results.gathered()  # on rank 0; the mean to every rank
        mean = self.trainer.strategy.broadcast(None if rows is None else summarize(rows)["clip_score_mean"], src=0)
        score = torch.tensor(mean, dtype=torch.float64, device=self.device)
        self.log("val/clip_score", score, sync_dist=True)  # equal on every process; the reduction keeps Lightning quiet
        if self.trainer.is_global_zero and self._val_pixels and not self.trainer.sanity_checking:
            log_validation_images(self.loggers, torch.cat(self._val_pixels), self.global_step)
        self._val_pixels = []

    # ----- training (fit): the U-Net or its adapters; the VAE and text encoder stay frozen -----

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        from ldm_lightning.generation.training import diffusion_loss, encode_images

        latents = batch.get("latents")
        if latents is None:
            with torch.no_grad():
                latents = encode_images(self.vae, batch["pixel_values"])
        parts, method = (self.unet, self.text_encoder, self.components.tokenizer, self.noise_schedule), self.finetune
        loss = diffusion_loss(*parts, latents, batch["prompt"], method.snr_gamma, method.noise_offset)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        """AdamW (lr 1e-3, weight decay 1e-2) on what trains, with `WarmupCosine` (100 warm-up steps) per step:
        the config files' `--optimizer` / `--lr_scheduler`, which replace this on the command line."""
        trained = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=1e-3, weight_decay=1e-2)
        scheduler = WarmupCosine(optimizer, warmup_steps=100, total_steps=self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from ldm_lightning.finetune.checkpoint import slim_checkpoint

        slim_checkpoint(checkpoint, self, PART_KEYS)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from ldm_lightning.finetune.checkpoint import prepare_checkpoint

        # The frozen parts left out on save, from this module as loaded; tensors with no place here are refused.
        prepare_checkpoint(checkpoint, self.state_dict())

    def save_pretrained(self, folder: str | Path) -> Path:
        """The model as a complete diffusers folder: every component from memory, the U-Net as trained."""
        from ldm_lightning.generation.export import save_pipeline

        return save_pipeline(self.components, folder, self.finetune.prediction_type)

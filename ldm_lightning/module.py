"""The LightningModule: frozen SD v1 components; sampling in `predict_step`/`test_step`; the LDM loss in `fit`.

It works in any `Trainer`: `trainer.predict` returns the image rows, `trainer.test` returns the scores
(`test/clip_score` and the rest, see `on_test_epoch_end`), `trainer.fit` trains the U-Net. It
orchestrates; the math lives in `generation/` (sampling, the loss) and `evaluation/` (CLIPScore, image
features, distances to real images, summaries).
"""

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import DDPMScheduler
from diffusers.optimization import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup
from lightning import LightningDataModule, LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from ldm_lightning.console import quiet_known_noise
from ldm_lightning.errors import UserError
from ldm_lightning.evaluation.clip_score import DEFAULT_CLIP, clip_source, load_clip, score_images
from ldm_lightning.evaluation.distribution import COMPARABLE_N, distribution_metrics
from ldm_lightning.evaluation.features import DEFAULT_DINOV2, ClipImageFeatures, Dinov2Features, extract, load_inception
from ldm_lightning.evaluation.geneval import summarize_geneval
from ldm_lightning.evaluation.groups import group_summary
from ldm_lightning.evaluation.names import FEATURES_OF, METRICS, PER_IMAGE_METRICS, QUALITY_KEYS, MetricName
from ldm_lightning.evaluation.per_image import PerImageScorers, ScorerSettings, check_settings, row_metadata
from ldm_lightning.evaluation.real_images import reference_cache_dir, reference_features
from ldm_lightning.evaluation.rows import FeatureRows, ResultRows
from ldm_lightning.evaluation.summary import summarize, summarize_per_prompt, summarize_scores
from ldm_lightning.finetune.checkpoint import fill_frozen, keep_trained, trained_names
from ldm_lightning.finetune.lora import add_lora, load_lora
from ldm_lightning.generation.components import Components, default_size, load_components, resolve, vae_scale_factor
from ldm_lightning.generation.fast import make_fast
from ldm_lightning.generation.sampling import Samples, to_uint8
from ldm_lightning.generation.schedulers import SchedulerName, build_scheduler, check_scheduler_name
from ldm_lightning.generation.training import diffusion_loss, encode_images
from ldm_lightning.inspection.attention import cross_attention_factors
from ldm_lightning.inspection.batch import InspectName, InspectOptions, generate_inspected
from ldm_lightning.memory import peak_memory_mb
from ldm_lightning.run_folder.scoreboard import ScoreboardLogger, board_hparams, write_scoreboard

DEFAULT_MODEL = "tiny-shapes"


class LatentDiffusionModule(LightningModule):
    """Stable Diffusion v1 text-to-image in Lightning: `predict` draws, `test` scores, `fit` trains the U-Net."""

    def __init__(
        self,
        pretrained_model_name_or_path: str = DEFAULT_MODEL,
        revision: str | None = None,
        variant: str | None = None,
        allow_pickle: bool = False,
        scheduler: SchedulerName = "ddim",
        num_inference_steps: int = 25,
        guidance_scale: float = 3.0,
        eta: float = 0.0,
        height: int | None = None,
        width: int | None = None,
        decode_fp32: Literal["auto", "always", "never"] = "auto",
        learning_rate: float = 1e-3,
        warmup_steps: int = 100,
        lr_schedule: Literal["cosine", "constant"] = "cosine",
        snr_gamma: float | None = 5.0,
        noise_offset: float = 0.0,
        prediction_type: Literal["epsilon", "v_prediction"] | None = None,
        gradient_checkpointing: bool = False,
        lora_rank: int | None = None,
        lora_alpha: float | None = None,
        lora_target_modules: list[str] | None = None,
        lora: str | None = None,
        lora_scale: float = 1.0,
        clip_model_name_or_path: str | None = None,
        fast: bool = False,
        step_progress: bool = False,
        metrics: list[MetricName] | None = None,
        inception_weights: str | None = None,
        dinov2_model_name_or_path: str | None = None,
        inspect: list[InspectName] | None = None,
        attention_factors: list[int] | None = None,
        attention_timesteps: tuple[float, float] | None = None,
        trajectory_every: int = 5,
        pick_score_model: str | None = None,
        hpsv2_checkpoint: str | None = None,
        hpsv2_clip: str | None = None,
        aesthetic_weights: str | None = None,
        aesthetic_clip: str | None = None,
        geneval_detector: str | None = None,
        geneval_clip: str | None = None,
        _components: Components | None = None,
    ):
        """
        Args:
            pretrained_model_name_or_path: a diffusers-format SD v1 model: hub id (e.g.
                CompVis/stable-diffusion-v1-4, cached or downloadable), local folder, or the
                embedded "tiny-shapes".
            revision: hub revision (branch, tag or commit) of the model.
            variant: weight variant to load, e.g. "fp16".
            allow_pickle: also load .bin (pickle) weights; only for files you trust.
            scheduler: sampler, built from the checkpoint's own scheduler config.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance scale; <= 1 disables guidance.
            eta: DDIM noise (0 = deterministic DDIM, 1 = DDPM-like); other samplers ignore it.
            height: image height in pixels, a multiple of the VAE factor (8 for SD). Default: the
                U-Net's training size.
            width: image width in pixels, as height.
            decode_fp32: decode latents with the VAE in fp32: "auto" does so under the fp16 precisions
                (16-mixed, 16-true), where SD v1's VAE overflows into black images; bf16 has fp32's
                exponent range and decodes in bf16.
            learning_rate: peak AdamW learning rate for `fit` (U-Net only).
            warmup_steps: linear warm-up steps at the start of `fit`.
            lr_schedule: after warm-up, "cosine" decay to 0 at the last step, or "constant" (the default
                of diffusers' training scripts).
            snr_gamma: min-SNR loss weighting gamma (Hang et al. 2023) for `fit`; null for plain MSE.
            noise_offset: offset noise for `fit` (Guttenberg 2023; diffusers' scripts use about 0.05),
                so the model can learn darker and brighter images; 0 is the plain objective.
            prediction_type: train (and sample) the U-Net to predict "epsilon" or "v_prediction"
                instead of what the checkpoint's scheduler config says; the exported model records it.
            gradient_checkpointing: recompute the U-Net's activations in the backward pass instead of
                storing them (`fit`): much less memory for about a third more time per step.
            lora_rank: train LoRA adapters of this rank on the U-Net (Hu et al. 2021) instead of the
                whole U-Net, which stays frozen; needs `pip install 'ldm_lightning[lora]'`. `fit` writes
                them as <log_dir>/lora/pytorch_lora_weights.safetensors, diffusers' LoRA format.
            lora_alpha: LoRA scale numerator: updates are scaled by alpha / rank. Default: the rank.
            lora_target_modules: U-Net layers that get adapters. Default: the attention projections
                to_q, to_k, to_v, to_out.0 (diffusers' train_text_to_image_lora.py).
            lora: a U-Net LoRA in diffusers' format (a file, or a folder holding
                pytorch_lora_weights.safetensors) to apply for predict, test and fit.
            lora_scale: strength of `lora` (1 = as trained, 0 = the base model).
            clip_model_name_or_path: CLIP that scores images in `test` (hub id or folder). Default:
                the embedded "tiny-clip" for the embedded model, else openai/clip-vit-large-patch14.
            fast: opt-in fast mode for predict/test (`fast.py`): on a GPU channels-last + `torch.compile`
                with CUDA graphs, on a CPU `torch.compile`. The first batch of each shape pays the
                compilation; images equal the exact path to float rounding.
            step_progress: also show a progress bar over each batch's denoising steps (rank 0), for
                runs where one batch takes minutes (SD v1.4 on a CPU).
            metrics: what `test` reports. CLIPScore (per image, alignment with the prompt) is always
                computed; the others compare the generated images with `data.reference`'s real ones:
                fid and kid (FID Inception, needs model.inception_weights), cmmd (CLIP embeddings,
                Gaussian-kernel MMD), fd_dinov2 (Fréchet distance on DINOv2 features), fd_clip
                (Fréchet distance on the scoring CLIP's image features). Per image, besides CLIPScore:
                pick_score (PickScore), hpsv2 (HPS v2 / v2.1), aesthetic (LAION aesthetic predictor),
                geneval (GenEval's rules; the prompts must be a GenEval evaluation_metadata.jsonl).
                Default: [clip_score].
            inception_weights: local TorchScript file of the FID Inception network,
                inception-2015-12-05.pt (StyleGAN2-ADA / clean-fid / EDM), for fid and kid.
            dinov2_model_name_or_path: DINOv2 for fd_dinov2 (hub id or folder); default
                facebook/dinov2-large.
            inspect: what to record while sampling, saved beside each image and shown in TensorBoard
                for the grid's first images; the images themselves do not change. "attention": a heat
                map per prompt word from the U-Net's cross-attention (DAAM, Tang et al. 2023),
                `<index>-<prompt>.attention.npz` and `.attention.png`; "trajectory": the predicted
                clean image x̂₀ every `trajectory_every` steps, `<index>-<prompt>.trajectory.png`.
            attention_factors: cross-attention layers to aggregate, by resolution as a downsampling
                factor of the latent (SD v1: 1 = 64², 2 = 32², 4 = 16², 8 = 8² at 512² pixels);
                default every layer (DAAM).
            attention_timesteps: [lowest, highest] diffusion timestep (0-1000 for SD) of the steps to
                aggregate, inclusive; default every step (DAAM).
            trajectory_every: keep x̂₀ after every this many denoising steps; the output image closes the strip.
            pick_score_model: PickScore's CLIP for pick_score (hub id or folder); default
                yuvalkirstain/PickScore_v1, processor from laion/CLIP-ViT-H-14-laion2B-s32B-b79K.
            hpsv2_checkpoint: HPS v2 / v2.1 checkpoint file (OpenCLIP format, e.g. HPS_v2.1_compressed.pt) for hpsv2.
            hpsv2_clip: transformers CLIP ViT-H-14 config and processor for hpsv2 (hub id or folder); default
                laion/CLIP-ViT-H-14-laion2B-s32B-b79K (its weights are not used).
            aesthetic_weights: the LAION aesthetic predictor file (sac+logos+ava1-l14-linearMSE.pth) for aesthetic.
            aesthetic_clip: CLIP ViT-L/14 for aesthetic; default openai/clip-vit-large-patch14.
            geneval_detector: GenEval's detector: a transformers Mask2Former (hub id or folder; default
                facebook/mask2former-swin-small-coco-instance), or "shapes-judge" for the embedded model.
            geneval_clip: GenEval's colour classifier CLIP (default openai/clip-vit-large-patch14;
                "shapes-judge" colours with the pixel judge, the default with that detector).
        """
        super().__init__()
        quiet_known_noise()
        check_scheduler_name(scheduler)
        if num_inference_steps < 1:
            raise UserError(f"model.num_inference_steps: must be at least 1, got {num_inference_steps}; try 25")
        if not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise UserError(
                f"model.guidance_scale: must be a finite number >= 0, got {guidance_scale}; SD v1.4 uses 7.5"
            )
        if not 0.0 <= eta <= 1.0:
            raise UserError(f"model.eta: must be in [0, 1], got {eta}; 0 is deterministic DDIM")
        for name, value in (("height", height), ("width", width)):
            if value is not None and value <= 0:
                raise UserError(
                    f"model.{name}: must be a positive number of pixels, got {value}; "
                    "leave it out for the model's own size"
                )
        unknown_views = [v for v in inspect or [] if v not in InspectName.__args__]
        if unknown_views:
            raise UserError(f"model.inspect: unknown {unknown_views}; choose from {', '.join(InspectName.__args__)}")
        if inspect and fast:
            raise UserError(
                "model.inspect: records inside the U-Net, which fast mode compiles; use one of model.inspect "
                "and model.fast at a time"
            )
        if trajectory_every < 1:
            raise UserError(f"model.trajectory_every: must be at least 1, got {trajectory_every}; try 5")
        if attention_timesteps is not None and attention_timesteps[0] > attention_timesteps[1]:
            raise UserError(
                f"model.attention_timesteps: [lowest, highest] expected, got {list(attention_timesteps)}; "
                "e.g. [0, 1000] for every step"
            )
        unknown = [m for m in metrics or [] if m not in METRICS]
        if unknown:
            raise UserError(f"model.metrics: unknown {unknown}; choose from {', '.join(METRICS)}")
        # Loaded now, to fail before sampling with where to get it; a plain dict keeps it out of Lightning's casts.
        check_settings(list(metrics or []), self._scorer_settings(locals()))
        needs_inception = {"fid", "kid"} & set(metrics or [])
        self._inception = {"inception": load_inception(inception_weights)} if needs_inception else {}
        self.save_hyperparameters(ignore=["_components"])
        self.components = _components or load_components(pretrained_model_name_or_path, revision, variant, allow_pickle)
        # Registered as submodules so that Lightning moves and casts them.
        self.unet, self.vae, self.text_encoder = self.components.unet, self.components.vae, self.components.text_encoder
        self.tokenizer = self.components.tokenizer
        if prediction_type is not None:  # sampling reads the same config, so it follows the new target
            self.components.scheduler_config = {**self.components.scheduler_config, "prediction_type": prediction_type}
        if lora and lora_rank is not None:
            raise UserError("model.lora: give either a LoRA to apply (model.lora) or one to train (model.lora_rank)")
        if lora:
            load_lora(self.unet, lora, lora_scale)
        if lora_rank is not None:
            add_lora(self.unet, lora_rank, lora_alpha, lora_target_modules)
        factor = vae_scale_factor(self.vae)
        native = default_size(self.unet, self.vae)
        train_steps = int(self.components.scheduler_config.get("num_train_timesteps", 1000))
        if num_inference_steps > train_steps:
            raise UserError(
                f"model.num_inference_steps: {num_inference_steps} is more than the {train_steps} steps the model was "
                f"trained with (its scheduler's num_train_timesteps); use at most {train_steps}"
            )
        self.height, self.width = native if height is None else height, native if width is None else width
        for name, value in (("height", self.height), ("width", self.width)):
            if value % factor:
                raise UserError(
                    f"model.{name}: {value} is not a multiple of {factor} (the VAE's downsampling "
                    f"factor); try {max(factor, round(value / factor) * factor)}"
                )
        self.strict_loading = False  # checkpoints hold only what trains (the U-Net, or its LoRA adapters)
        available = sorted(set(cross_attention_factors(self.unet).values()))
        if attention_factors and not set(attention_factors) <= set(available):
            raise UserError(
                f"model.attention_factors: this U-Net has cross-attention at downsampling factors {available}, "
                f"got {attention_factors}; choose among those or leave it out for all"
            )
        # `test`'s scorers, loaded in `setup` (`prepare_scoring`), and its results as metric state.
        self.clip: tuple | None = None
        self.extractors: dict[str, torch.nn.Module] | None = None
        self.reference: dict[str, Any] | None = None
        self.reference_skipped: list[str] = []
        self.scorers: PerImageScorers | None = None
        self.results = ResultRows(self.per_image_metrics)
        self.features = FeatureRows(self.feature_names)
        self._restored: tuple[list, dict] = ([], {})
        self.summary: dict[str, Any] | None = None  # the last `test`'s summary (see `on_test_epoch_end`)
        self.val_results = ResultRows()  # validation's scores, gathered as `test`'s are
        self._val_pixels: list[torch.Tensor] = []

    @classmethod
    def from_components(cls, components: Components, **settings: Any) -> "LatentDiffusionModule":
        """The module on components already in memory (benchmarks, notebooks): nothing is loaded.

        `settings` are the constructor's arguments; `pretrained_model_name_or_path` only names the model.
        """
        return cls(**settings, _components=components)

    # ----- settings: what changes the results -----

    def settings(self) -> dict[str, Any]:
        """Everything besides the prompt row that changes the pixels (precision is the Trainer's)."""
        hp = self.hparams
        return {
            "model": hp.pretrained_model_name_or_path,
            "revision": hp.revision,
            "variant": hp.variant,
            "scheduler": hp.scheduler,
            "num_inference_steps": hp.num_inference_steps,
            "guidance_scale": hp.guidance_scale,
            "eta": hp.eta,
            "height": self.height,
            "width": self.width,
            # Same images to float rounding, not bit for bit; only when on, so earlier runs still resume.
            **({"fast": True} if hp.fast else {}),
            # Same images, more files: a run with inspection gets its own folder rather than resuming one without.
            **({"inspect": self.inspect_options_text()} if hp.inspect else {}),
            # Only when set, so runs without them keep their fingerprint.
            **({"prediction_type": hp.prediction_type} if hp.prediction_type else {}),
            **({"lora": str(hp.lora), "lora_scale": hp.lora_scale} if hp.lora else {}),
        }

    @property
    def inspect_options(self) -> InspectOptions:
        hp = self.hparams
        return InspectOptions(
            kinds=tuple(hp.inspect or ()),
            attention_factors=tuple(hp.attention_factors) if hp.attention_factors else None,
            attention_timesteps=tuple(hp.attention_timesteps) if hp.attention_timesteps else None,
            trajectory_every=hp.trajectory_every,
        )

    def inspect_options_text(self) -> str:
        """The inspection settings in one line, e.g. "attention (factors all, timesteps all), trajectory (every 5)"."""
        options, parts = self.inspect_options, []
        if "attention" in options.kinds:
            factors = ",".join(map(str, options.attention_factors)) if options.attention_factors else "all"
            steps = "-".join(f"{t:g}" for t in options.attention_timesteps) if options.attention_timesteps else "all"
            parts.append(f"attention (factors {factors}, timesteps {steps})")
        if "trajectory" in options.kinds:
            parts.append(f"trajectory (every {options.trajectory_every})")
        return ", ".join(parts)

    def run_settings(self, precision: str, stage: str) -> dict[str, Any]:
        """The settings of a `predict` or `test` run under a Trainer of `precision` (e.g. "32-true").

        For `test` also the scoring CLIP and, when distribution metrics are asked for, the feature
        networks (only then, so runs without them keep their fingerprint).
        """
        settings = {**self.settings(), "precision": str(precision)}
        if stage == "test":
            settings["clip_model"] = self.clip_name
            extractors = ", ".join(f"{n}={source}" for n, source in self.extractor_sources().items())
            if extractors:
                settings["feature_extractors"] = extractors
            scorers = {k: v for k, v in vars(self._scorer_settings(dict(self.hparams))).items() if v is not None}
            if len(self.per_image_metrics) > 1:  # only then, so runs of CLIPScore alone keep their fingerprint
                settings["per_image_metrics"] = ", ".join(self.per_image_metrics)
                settings.update({f"scorer_{k}": v for k, v in scorers.items()})
        return settings

    @property
    def clip_name(self) -> str:
        """The CLIP that scores `test` images."""
        if self.hparams.clip_model_name_or_path:
            return self.hparams.clip_model_name_or_path
        return "tiny-clip" if self.hparams.pretrained_model_name_or_path == DEFAULT_MODEL else DEFAULT_CLIP

    @staticmethod
    def _scorer_settings(values: dict[str, Any]) -> ScorerSettings:
        return ScorerSettings(**{f: values.get(f) for f in ScorerSettings.__dataclass_fields__})

    @property
    def per_image_metrics(self) -> tuple[str, ...]:
        """CLIPScore and the other per-image metrics asked for, in `PER_IMAGE_METRICS` order."""
        asked = set(self.hparams.metrics or []) | {"clip_score"}
        return tuple(m for m in PER_IMAGE_METRICS if m in asked)

    @property
    def feature_names(self) -> list[str]:
        """The feature sets the requested distribution metrics compare (none by default)."""
        return list(dict.fromkeys(FEATURES_OF[m] for m in self.hparams.metrics or [] if m in FEATURES_OF))

    def extractor_sources(self) -> dict[str, str]:
        """Where each needed feature network comes from (file, hub id or folder)."""
        sources = {
            "inception": self.hparams.inception_weights,
            "clip": self.clip_name,
            "dinov2": self.hparams.dinov2_model_name_or_path or DEFAULT_DINOV2,
        }
        return {name: sources[name] for name in self.feature_names}

    # ----- sampling (predict and test share it) -----

    def _decode_fp32(self) -> bool:
        mode = self.hparams.decode_fp32
        if mode == "auto":
            return self._trainer is not None and str(self._trainer.precision).startswith("16")
        return mode == "always"

    def sample(self, batch: dict[str, Any]) -> Samples:
        """Generate the batch's images; a fresh scheduler per batch (diffusers#8711)."""
        return self.sample_inspected(batch)[0]

    def sample_inspected(self, batch: dict[str, Any]) -> tuple[Samples, list[dict[str, Any]]]:
        """The batch's images and, per image, what `inspect` asked to record (empty dicts when nothing)."""
        hp = self.hparams
        return generate_inspected(
            self.components,
            build_scheduler(hp.scheduler, self.components.scheduler_config),
            batch["prompt"],
            batch["negative_prompt"],
            list(batch["seed"]),
            num_inference_steps=hp.num_inference_steps,
            guidance_scale=hp.guidance_scale,
            eta=hp.eta,
            height=self.height,
            width=self.width,
            options=self.inspect_options,
            decode_fp32=self._decode_fp32(),
            progress=self.hparams.step_progress and (self._trainer is None or self._trainer.is_global_zero),
        )

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        samples, views = self.sample_inspected(batch)
        return with_views(rows_of(batch, samples, to_uint8(samples.images)), views)

    # ----- evaluation (test): the same samples, scored -----

    def prepare_scoring(self) -> None:
        """Load the scoring CLIP and the feature networks the metrics need (once; `setup` calls it).

        Callers may call it earlier to fail before any work when a network cannot be loaded.
        """
        if self.clip is None:
            self.clip = load_clip(self.clip_name)
        if self.extractors is None:
            self.extractors = self.build_extractors()
        if self.scorers is None:
            self.scorers = PerImageScorers(list(self.hparams.metrics or []), self._scorer_settings(dict(self.hparams)))

    def build_extractors(self) -> dict[str, torch.nn.Module]:
        """The feature networks the requested metrics need, built once, frozen, fp32 (kept out of Lightning's casts)."""
        hp = self.hparams
        built = {
            "inception": lambda: self._inception["inception"],
            "clip": lambda: ClipImageFeatures(self.clip, self.clip_name, clip_source(self.clip_name)),
            "dinov2": lambda: Dinov2Features(hp.dinov2_model_name_or_path or DEFAULT_DINOV2),
        }
        return {name: built[name]().eval().requires_grad_(False) for name in self.feature_names}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> list[dict[str, Any]]:
        start = time.perf_counter()
        samples, views = self.sample_inspected(batch)
        pixels = to_uint8(samples.images)
        rows = with_views(rows_of(batch, samples, pixels), views)
        scores = score_images(pixels, batch["prompt"], self.clip)
        metadata = self._geneval_metadata(batch) if "geneval" in self.scorers.names else [None] * len(rows)
        others = self.scorers(pixels, batch["prompt"], metadata)
        features = {name: values.numpy() for name, values in extract(self.extractors, pixels).items()}
        seconds = (time.perf_counter() - start) / len(rows)
        memory = peak_memory_mb(self.device)
        for i, (row, score) in enumerate(zip(rows, scores)):
            if features:  # for a run folder's resume; the metric state below holds them too
                row["features"] = {name: values[i] for name, values in features.items()}
            # Broken samples are flagged and left out of the mean (counted in the summary).
            healthy = row["finite"] and not row["black"]
            row["clip_score"] = score if healthy else None
            for name, values in others.items():
                row[name] = self.scorers.value_for_image(name, values[i], healthy)
            row["seconds"] = seconds  # the batch's wall time (sampling + scoring) per image
            row["first_batch"] = batch_idx == 0  # this process's first: pays warm-up and compilation
            row["peak_memory_mb"] = memory
        self.results.update(rows)
        self.features.update([r["index"] for r in rows], features)
        metrics = {
            "test/seconds_per_image": seconds,
            "test/steps_per_second": self.hparams.num_inference_steps / seconds,
            "test/peak_memory_mb": memory,
        }
        # Per-process, per-step values: no sync_dist here (it deadlocks when processes run different
        # numbers of steps); the scores are gathered once, at epoch end, by the metrics above.
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(rows))
        return rows

    def _geneval_metadata(self, batch: dict[str, Any]) -> list[dict[str, Any]]:
        rows = {r["index"]: r for r in self.trainer.datamodule.rows}
        return [row_metadata(rows[int(i)]) for i in batch["index"]]

    # ----- validation during fit: fixed prompts and seeds, sampled and scored with `test`'s CLIPScore -----

    def on_validation_epoch_start(self) -> None:
        if self.clip is None:  # `setup` loads it; not a submodule, so never trained, averaged or saved
            self.clip = load_clip(self.clip_name)
        self.val_results.reset()
        self._val_pixels = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        samples = self.sample(batch)
        pixels = to_uint8(samples.images)
        rows = rows_of(batch, samples, pixels)
        for row, score in zip(rows, score_images(pixels, batch["prompt"], self.clip)):
            row["clip_score"] = score if row["finite"] and not row["black"] else None  # as `test_step` counts
        self.val_results.update(rows)
        self._val_pixels.append(pixels.cpu())

    def on_validation_epoch_end(self) -> None:
        """Log `val/clip_score`, the mean CLIPScore over every validation image of every process (each
        counted once, as `test` gathers them), and on rank 0 a grid of its images to TensorBoard (`val/images`)."""
        summary = summarize(self.val_results.compute())
        score = torch.tensor(summary["clip_score_mean"], dtype=torch.float64, device=self.device)
        self.log("val/clip_score", score, sync_dist=True)  # equal on every process; the reduction keeps Lightning quiet
        if self.trainer.is_global_zero and self._val_pixels and not self.trainer.sanity_checking:
            grid = image_grid(torch.cat(self._val_pixels))
            for logger in self.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_image("val/images", grid, self.global_step, dataformats="CHW")
        self._val_pixels = []

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
            if self.feature_names:
                self.features.update([r["index"] for r in rows], features)
        self._restored = ([], {})

    def on_test_epoch_end(self) -> None:
        """Gather every process's rows once and log the summary: `test/clip_score` (mean over healthy
        images), `test/clip_score_std`, `test/clip_score_ci95_low` / `_high` (bootstrap), `test/n`, and
        `test/<metric>` for each distribution metric asked for. With several images per prompt the summary
        also averages each per-image metric per prompt (`<metric>_prompt_mean`, `_prompt_ci95` resampling
        prompts, `n_prompts`). The whole summary is `self.summary`."""
        rows = self.results.compute()
        summary = summarize(rows)
        for metric in self.per_image_metrics[1:]:
            summary.update(summarize_scores(rows, metric))
        prompt_rows = {r["index"]: r for r in self.trainer.datamodule.rows} if self.trainer.datamodule else {}
        with_prompts = [{**prompt_rows.get(r["index"], {}), **r} for r in rows]
        if any("prompt_index" in r for r in with_prompts):  # several images per prompt: also average per prompt
            summary["n_prompts"] = len({r["prompt_index"] for r in with_prompts})
            for metric in self.per_image_metrics:
                summary.update(summarize_per_prompt(with_prompts, metric))
        if "geneval" in self.per_image_metrics:
            summary.update(summarize_geneval(with_prompts))
        if self.feature_names:
            features = self.features.compute()
            quality = self.distribution_summary(features) if self.trainer.is_global_zero else None
            summary.update(self.trainer.strategy.broadcast(quality, src=0))
        group_by = self._data_hparam("group_by")
        if group_by:
            summary["groups"] = group_summary(with_prompts, group_by, self.per_image_metrics)
        self.summary = summary
        logged = {  # float64 tensors: Lightning would store plain floats as float32 (7 digits)
            "test/clip_score": summary["clip_score_mean"],
            "test/clip_score_std": summary["clip_score_std"],
            "test/clip_score_ci95_low": summary["clip_score_ci95"][0],
            "test/clip_score_ci95_high": summary["clip_score_ci95"][1],
            "test/n": float(summary["n"]),
            **{f"test/{key}": summary[key] for key in QUALITY_KEYS if key in summary},
            **{f"test/{m}": summary[f"{m}_mean"] for m in self.per_image_metrics[1:]},
            **({"test/geneval_overall": summary["geneval_overall"]} if "geneval_overall" in summary else {}),
        }
        logged = {name: torch.tensor(value, dtype=torch.float64, device=self.device) for name, value in logged.items()}
        # The same values on every process (gathered above); the mean reduction only keeps Lightning quiet.
        self.log_dict(logged, sync_dist=True)
        settings = self.run_settings(self.trainer.precision, "test")
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                if self.trainer.is_global_zero:  # scores, per-row histograms and an HParams entry per run
                    hparams = board_hparams(settings, getattr(self.trainer.datamodule, "hparams", {}), len(rows))
                    write_scoreboard(logger.experiment, summary, rows, hparams, self.per_image_metrics)
                if isinstance(logger, ScoreboardLogger):  # not Lightning's single-point copies of them
                    logger.on_board.update(logged)
            else:
                logger.log_hyperparams({k: "none" if v is None else v for k, v in settings.items()})
        if summary["n_truncated"]:
            rank_zero_info(f"{summary['n_truncated']} prompts were longer than the tokenizer limit and were truncated.")

    def _data_hparam(self, name: str) -> Any:
        datamodule = self.trainer.datamodule
        return getattr(datamodule, "hparams", {}).get(name) if datamodule is not None else None

    def distribution_summary(self, generated: dict[str, Any]) -> dict[str, Any]:
        """The requested distribution metrics of the generated features against the reference, with their N."""
        n_generated = len(generated["index"])
        n_reference = len(next(iter(self.reference.values())))
        if min(n_generated, n_reference) < COMPARABLE_N:
            rank_zero_info(
                f"note: distribution metrics from {n_generated} generated and {n_reference} reference images: "
                f"values below {COMPARABLE_N:,} images are biased upwards and not comparable with published ones"
            )
        return {
            **distribution_metrics(self.hparams.metrics, self.reference, generated),
            "n_generated": n_generated,
            "n_reference": n_reference,
            "n_reference_skipped": len(self.reference_skipped),
            "reference": self._data_hparam("reference"),
            "extractors": self.extractor_sources(),
            "resize": {name: net.resize for name, net in self.extractors.items()},
        }

    # ----- per-stage setup -----

    def setup(self, stage: str) -> None:
        if stage == "test":
            self.prepare_scoring()
            if self.feature_names:
                self._check_reference()
            if "geneval" in self.per_image_metrics and self._trainer is not None and self.trainer.datamodule:
                for row in self.trainer.datamodule.rows:  # every prompt's metadata, before any sampling
                    row_metadata(row)
        if stage == "fit":
            if self.hparams.lora_rank is None:
                self.unet.requires_grad_(True)  # else only the adapters train (`add_lora` froze the rest)
            self.unet.train()  # the frozen VAE and text encoder stay in eval mode
            if self.hparams.gradient_checkpointing:
                self.unet.enable_gradient_checkpointing()
            # The forward process uses the checkpoint's own noise schedule (betas).
            self.noise_schedule = DDPMScheduler.from_config(self.components.scheduler_config)
        if stage in ("fit", "validate") and self._validates() and self.clip is None:
            # Now, so that a CLIP that cannot load fails before training rather than at the first validation.
            self.clip = load_clip(self.clip_name)

    def _validates(self) -> bool:
        """Whether this run has validation batches to sample and score."""
        from lightning.pytorch.utilities.model_helpers import is_overridden

        if self._trainer is None:  # `setup` called by hand, outside a Trainer
            return False
        datamodule = self.trainer.datamodule
        has_data = datamodule is not None and is_overridden("val_dataloader", datamodule, LightningDataModule)
        return has_data and self.trainer.limit_val_batches != 0

    def _check_reference(self) -> None:
        datamodule = self.trainer.datamodule
        if not getattr(datamodule, "reference_files", None):
            raise UserError(
                f"data.reference: model.metrics {self.hparams.metrics} compare generated with real images; "
                "pass --data.reference FOLDER, GLOB or TABLE (PromptDataModule(reference=...) in Python)"
            )
        if len(datamodule.rows) < 2:
            raise UserError(
                f"data.prompts: distribution metrics need at least 2 generated images, got {len(datamodule.rows)}"
            )

    def on_predict_start(self) -> None:
        self._apply_fast_mode()

    def on_test_start(self) -> None:
        self._apply_fast_mode()
        self.scorers.to(self.device)
        for net in self.extractors.values():
            net.to(self.device)
        if self.extractors and self.trainer.is_global_zero:
            files = self.trainer.datamodule.reference_files
            cache_dir = reference_cache_dir()
            self.reference, self.reference_skipped = reference_features(files, self.extractors, cache_dir, self.device)
            n = len(next(iter(self.reference.values())))
            if n < 2:
                raise UserError(f"data.reference: {n} readable image; distribution metrics need at least 2")
            skipped = f", {len(self.reference_skipped)} unreadable skipped" if self.reference_skipped else ""
            rank_zero_info(f"reference: {n} images{skipped}; features cached in {cache_dir}")

    def _apply_fast_mode(self) -> None:
        # Here, not in `setup`: Lightning moves the module to its device and dtype after `setup`, and
        # fast mode's choices (CUDA graphs, channels-last) depend on where the U-Net lives.
        if self.hparams.fast:
            settings = make_fast(self.unet)  # in place, once: the sampling code keeps the same module object
            rank_zero_info(f"fast mode {settings}: the first batch of each shape compiles the U-Net (about a minute)")

    # ----- training (fit): the U-Net only; the VAE and text encoder stay frozen -----

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        latents = batch.get("latents")
        if latents is None:
            with torch.no_grad():
                latents = encode_images(self.vae, batch["pixel_values"])
        loss = diffusion_loss(
            self.unet,
            self.text_encoder,
            self.tokenizer,
            self.noise_schedule,
            latents,
            batch["prompt"],
            self.hparams.snr_gamma,
            self.hparams.noise_offset,
        )
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        hp = self.hparams
        trained = [p for p in self.unet.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=hp.learning_rate, weight_decay=1e-2)
        total = max(self.trainer.estimated_stepping_batches, hp.warmup_steps + 1)
        if hp.lr_schedule == "constant":
            scheduler = get_constant_schedule_with_warmup(optimizer, hp.warmup_steps)
        else:
            scheduler = get_cosine_schedule_with_warmup(optimizer, hp.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Only what trains (with EMA, its average too): the frozen parts come from the pretrained model again.
        names = trained_names(self) or {k for k in checkpoint["state_dict"] if k.startswith("unet.")}
        keep_trained(checkpoint, names)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen parts left out on save, from this module as loaded: resuming with EMA loads strictly.
        fill_frozen(checkpoint, self.state_dict())

    def save_pretrained(self, folder: str | Path) -> Path:
        """The model as a diffusers folder: the (trained) U-Net with the other components copied."""
        folder = Path(folder)
        source = Path(resolve(self.hparams.pretrained_model_name_or_path))
        if source.is_dir():
            shutil.copytree(source, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("unet"))
        self.unet.save_pretrained(folder / "unet")
        if self.hparams.prediction_type:  # what the U-Net now predicts, so that samplers read it
            config_file = folder / "scheduler" / "scheduler_config.json"
            config = json.loads(config_file.read_text()) if config_file.is_file() else {}
            config_file.parent.mkdir(parents=True, exist_ok=True)
            config_file.write_text(json.dumps({**config, "prediction_type": self.hparams.prediction_type}, indent=2))
        return folder


def rows_of(batch: dict[str, Any], samples: Samples, pixels: torch.Tensor) -> list[dict[str, Any]]:
    """One dict per image: the prompt row, its uint8 (B, 3, H, W) `pixels` as HWC arrays, health flags."""
    pixels = pixels.permute(0, 2, 3, 1).cpu().numpy()
    black = samples.images.flatten(1).amax(dim=1).cpu() < 1 / 255
    return [
        {
            "index": int(batch["index"][i]),
            "prompt": batch["prompt"][i],
            "negative_prompt": batch["negative_prompt"][i],
            "seed": int(batch["seed"][i]),
            "pixels": pixels[i],
            "num_tokens": int(samples.num_tokens[i]),
            "truncated": bool(samples.truncated[i]),
            "finite": bool(samples.finite[i]),
            "black": bool(black[i]),
        }
        for i in range(len(batch["prompt"]))
    ]


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


def image_grid(pixels: torch.Tensor, columns: int = 8) -> torch.Tensor:
    """uint8 images (N, 3, H, W) side by side, `columns` to a row: one (3, rows·H, columns·W) picture.

    Written out because torchvision's `make_grid` is not a dependency and diffusers' `make_image_grid`
    takes PIL images and needs a full last row.
    """
    n, channels, height, width = pixels.shape
    columns = min(columns, n)
    rows = -(-n // columns)
    padded = torch.cat([pixels, pixels.new_zeros(rows * columns - n, channels, height, width)])
    return (
        padded.view(rows, columns, channels, height, width)
        .permute(2, 0, 3, 1, 4)
        .reshape(channels, rows * height, columns * width)
    )

"""Benchmark: our sampling path against diffusers' StableDiffusionPipeline on identical components.

    python scripts/benchmark.py --model tiny-shapes                       # the embedded model
    python scripts/benchmark.py --model sd14 --height 256 --steps 4       # SD v1.4 architecture, random weights
    python scripts/benchmark.py --gpu                                     # SD v1.4 at 512², 50 steps, on CUDA

Each variant runs alternately in one process, `--repeats` times, on the same prompts, seeds,
scheduler and steps; the table gives the median. Rows:
- `pipeline`: `StableDiffusionPipeline.__call__` (the reference);
- `ours, bare loop`: `sampling.generate` called directly;
- `ours, Trainer.predict`: the same through Lightning (what `python -m ldm_lightning predict` runs);
- `ours, compiled`: the opt-in `model.compile_unet` (torch.compile) path.
Peak memory is CUDA's max allocated on a GPU, else the peak resident-set increase of the call
(Linux VmHWM, reset before each call). FLOPs are counted (torch.utils.flop_counter), not estimated.
"""

import argparse
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline
from lightning import Trainer
from torch.utils.data import DataLoader

from ldm_lightning.anatomy import text_encoder_flops, unet_step_flops, vae_decode_flops
from ldm_lightning.components import Components, default_size, load_components, vae_scale_factor
from ldm_lightning.data import _Rows, collate, read_rows
from ldm_lightning.memory import peak_rss_delta
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.sampling import generate
from ldm_lightning.schedulers import build_scheduler

PROMPTS = ["a red circle", "a large blue square at the top", "a small green triangle on the left", "a yellow star"]


def sd14_random(dtype: torch.dtype, device: str) -> Components:
    """SD v1.4's exact architecture with random weights and a byte-level tokenizer (77 tokens)."""
    import tempfile

    from ldm_lightning.architectures import build_sd14, sd14_scheduler_config
    from ldm_lightning.tiny import save_byte_tokenizer

    parts = build_sd14(device=device, dtype=dtype)
    tokenizer = save_byte_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer", max_length=77)
    for m in parts.values():
        m.requires_grad_(False).eval()
    return Components(tokenizer, parts["text_encoder"], parts["unet"], parts["vae"], sd14_scheduler_config())


class Preloaded(LatentDiffusionModule):
    """The LightningModule on components already in memory."""

    parts_to_use: Components | None = None

    def load_parts(self) -> Components:
        return self.parts_to_use


@contextmanager
def timed_modules(parts: Components, totals: dict):
    """Accumulate wall time spent inside the U-Net and the VAE decoder."""
    handles, starts = [], {}
    for name, module in (("unet", parts.unet), ("vae", parts.vae.decoder)):
        handles.append(
            module.register_forward_pre_hook(lambda m, a, n=name: starts.__setitem__(n, time.perf_counter()))
        )
        handles.append(
            module.register_forward_hook(
                lambda m, a, o, n=name: totals.__setitem__(n, totals.get(n, 0.0) + time.perf_counter() - starts[n])
            )
        )
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device) -> tuple[float, float | None, object]:
    """(seconds, peak memory in MiB, result) of one call."""
    out = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        sync(device)
        start = time.perf_counter()
        out["r"] = fn()
        sync(device)
        seconds = time.perf_counter() - start
        return seconds, (torch.cuda.max_memory_allocated(device) - base) / 2**20, out["r"]

    def call():
        start = time.perf_counter()
        out["r"] = fn()
        out["t"] = time.perf_counter() - start

    peak = peak_rss_delta(call)
    return out["t"], None if peak is None else peak / 2**20, out["r"]


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul rate of this device and dtype, TFLOP/s (best of `repeats`)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e12


def flops_per_image(parts: Components, height: int, width: int, steps: int, cfg: bool) -> int:
    """Counted FLOPs of one image: text encoder + steps × U-Net (CFG batch 2) per sample + one VAE decode."""
    factor = vae_scale_factor(parts.vae)
    batch = 2 if cfg else 1
    unet = unet_step_flops(parts.unet, (height // factor, width // factor), batch, parts.tokenizer.model_max_length)
    return text_encoder_flops(parts.text_encoder, batch) + steps * unet + vae_decode_flops(parts.vae, height, width)


def run(args) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and args.gpu else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    if args.model == "sd14":
        parts, what = sd14_random(dtype, str(device)), "SD v1.4 architecture, random weights"
    else:
        parts, what = load_components(args.model), f"{args.model} (real weights)"
        for m in (parts.unet, parts.vae, parts.text_encoder):
            m.to(device=device, dtype=dtype)
    height = args.height or default_size(parts.unet, parts.vae)
    n_images = args.batch * args.batches
    prompts = (PROMPTS * n_images)[:n_images]
    rows = read_rows(prompts, seed=0)
    chunks = [rows[i : i + args.batch] for i in range(0, n_images, args.batch)]
    settings = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, eta=0.0, height=height, width=height)
    pipe = StableDiffusionPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=parts.unet,
        scheduler=build_scheduler(args.scheduler, parts.scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    def reference():
        out = []
        for chunk in chunks:
            pipe.scheduler = build_scheduler(args.scheduler, parts.scheduler_config)
            gens = [torch.Generator("cpu").manual_seed(r["seed"]) for r in chunk]
            out.append(
                pipe(
                    [r["prompt"] for r in chunk],
                    negative_prompt=[""] * len(chunk),
                    generator=gens,
                    output_type="pt",
                    **settings,
                ).images
            )
        return torch.cat(out)

    def ours(parts_):
        out = []
        for chunk in chunks:
            out.append(
                generate(
                    parts_,
                    build_scheduler(args.scheduler, parts.scheduler_config),
                    [r["prompt"] for r in chunk],
                    [""] * len(chunk),
                    [r["seed"] for r in chunk],
                    **settings,
                ).images
            )
        return torch.cat(out)

    def bare():
        return ours(parts)

    Preloaded.parts_to_use = parts
    module = Preloaded(
        scheduler=args.scheduler,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        height=height,
        width=height,
    )
    precision = {"fp32": "32-true", "bf16": "bf16-true", "fp16": "16-true"}[args.dtype]
    trainer = Trainer(
        accelerator=device.type,
        devices=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    loader = DataLoader(_Rows(rows), batch_size=args.batch, collate_fn=collate)

    def lightning():
        return trainer.predict(module, loader)

    variants = {"pipeline": reference, "ours, bare loop": bare, "ours, Trainer.predict": lightning}
    if args.compiled:
        compiled_parts = Components(
            parts.tokenizer, parts.text_encoder, torch.compile(parts.unet), parts.vae, parts.scheduler_config
        )
        variants["ours, compiled"] = lambda: ours(compiled_parts)
        variants["ours, compiled"]()  # compile outside the timed runs
    with torch.inference_mode():
        bare(), reference()  # warm-up
        results = {name: [] for name in variants}
        images = {}
        shares = {}
        for _ in range(args.repeats):
            for name, fn in variants.items():  # alternate, so drift hits every variant alike
                totals = {}
                with timed_modules(parts, totals):
                    seconds, memory, out = measure(fn, device)
                results[name].append((seconds, memory))
                shares[name] = (totals.get("unet", 0) + totals.get("vae", 0)) / seconds
                if name != "ours, Trainer.predict":
                    images[name] = out

    flops = flops_per_image(parts, height, height, args.steps, args.guidance > 1)
    peak = matmul_tflops(device, dtype)
    ref_time = statistics.median(s for s, _ in results["pipeline"])
    ref_mem = statistics.median((m or 0) for _, m in results["pipeline"])
    print(
        f"\n{what}; {height}×{height}, {args.scheduler}, {args.steps} steps, guidance {args.guidance}, "
        f"batch {args.batch} × {args.batches} batches, {args.dtype}, {device.type}; "
        f"{args.repeats} alternating repeats, medians"
    )
    print(f"counted FLOPs per image: {flops / 1e12:.4f} TFLOP; measured {args.dtype} matmul: {peak:.3f} TFLOP/s\n")
    print(
        "| variant | s/image | × pipeline time | peak MiB | × pipeline memory | max abs diff vs pipeline "
        "| U-Net+VAE share | TFLOP/s | of matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, runs in results.items():
        seconds = statistics.median(s for s, _ in runs) / n_images
        memory = statistics.median((m or 0) for _, m in runs)
        diff = (
            (images[name].float() - images["pipeline"].float()).abs().max().item() if name in images else float("nan")
        )
        rate = flops / seconds / 1e12
        print(
            f"| {name} | {seconds:.4f} | {seconds * n_images / ref_time:.3f} | {memory:.0f} | "
            f"{memory / ref_mem if ref_mem else float('nan'):.2f} | {diff:.2e} | {shares[name]:.0%} | "
            f"{rate:.3f} | {rate / peak:.1%} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes", help="'sd14' (random weights), a folder, or an embedded name")
    parser.add_argument("--height", type=int, default=None, help="square image side (default: the model's)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--batches", type=int, default=2, help="batches per timed call")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compiled", action="store_true", help="also time the torch.compile'd U-Net")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA if present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()

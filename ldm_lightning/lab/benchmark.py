"""Benchmark: our sampling path against diffusers' StableDiffusionPipeline on identical components.

    python -m ldm_lightning.lab.benchmark --model tiny-shapes                       # the embedded model
    python -m ldm_lightning.lab.benchmark --model sd14 --height 256 --steps 4  # SD v1.4 shapes, random weights
    python -m ldm_lightning.lab.benchmark --gpu --model sd14 --height 512 --steps 50 --batch 1 8 --fast   # on CUDA

Each variant runs alternately in one process, `--repeats` times, on the same prompts, seeds,
scheduler and steps; the table gives the median. Rows:
- `pipeline`: `StableDiffusionPipeline.__call__` (the reference);
- `ours, bare loop`: `sampling.generate` called directly;
- `ours, Trainer.predict`: the same through Lightning (what `python -m ldm_lightning predict` runs);
- `ours, fast, Trainer.predict`: `--model.sampling.fast true` (`generation/fast.py`), on a copy of the U-Net;
- `ours, fast (bare loop)`: the bare loop on that same compiled copy.
`it/s (whole call)` counts denoising steps over the whole call, prompt encoding and decoding included.
Peak memory is CUDA's max allocated during the call on a GPU (weights included), else the peak
resident-set increase of the call (Linux VmHWM, reset before each call). FLOPs are counted
(torch.utils.flop_counter), not estimated.
"""

import argparse
import copy
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning import Trainer
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch.utils.data import DataLoader

from ldm_lightning.data import PromptRows, collate, read_rows
from ldm_lightning.errors import first_line
from ldm_lightning.generation.components import Components, default_size, load_components, vae_scale_factor
from ldm_lightning.generation.fast import fast_settings
from ldm_lightning.generation.guidance import ClassifierFreeGuidance
from ldm_lightning.generation.sampler import Sampling
from ldm_lightning.generation.sampling import generate
from ldm_lightning.generation.schedulers import build_scheduler
from ldm_lightning.lab.anatomy import text_encoder_flops, unet_step_flops, vae_decode_flops
from ldm_lightning.memory import peak_rss_delta
from ldm_lightning.module import LatentDiffusionModule
from ldm_lightning.testing import reference_pipeline

FAST, FAST_TRAINER = "ours, fast (bare loop)", "ours, fast, Trainer.predict"
PROMPTS = ["a red circle", "a large blue square at the top", "a small green triangle on the left", "a yellow star"]


def sd14_random(dtype: torch.dtype, device: str) -> Components:
    """SD v1.4's exact architecture with random weights and a byte-level tokenizer (77 tokens)."""
    import tempfile

    from ldm_lightning.generation.schedulers import SD14_SCHEDULER_CONFIG
    from ldm_lightning.lab.architectures import build_sd14
    from ldm_lightning.testing import save_byte_tokenizer

    components = build_sd14(device=device, dtype=dtype)
    tokenizer = save_byte_tokenizer(Path(tempfile.mkdtemp()) / "tokenizer", max_length=77)
    for m in components.values():
        m.requires_grad_(False).eval()
    return Components(
        tokenizer, components["text_encoder"], components["unet"], components["vae"], dict(SD14_SCHEDULER_CONFIG)
    )


class KeepOnDevice(SingleDeviceStrategy):
    """Lightning's single-device strategy, except that the module stays on its device when a stage ends:
    every variant shares the same components (a CLI run pays that move once, at exit)."""

    def teardown(self) -> None:
        self.precision_plugin.teardown()
        self.accelerator.teardown()
        self.checkpoint_io.teardown()


@contextmanager
def timed_modules(components: Components, totals: dict, device: torch.device):
    """Accumulate the time spent inside the U-Net and the VAE decoder: CUDA events on a GPU (the host
    returns before the kernels finish), wall time on a CPU."""

    def now():
        if device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    spans, handles = [], []
    for name, module in (("unet", components.unet), ("vae", components.vae.decoder)):
        handles.append(module.register_forward_pre_hook(lambda m, a, n=name: spans.append([n, now()])))
        handles.append(module.register_forward_hook(lambda m, a, o: spans[-1].append(now())))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        sync(device)
        for name, begin, end in spans:
            seconds = begin.elapsed_time(end) / 1e3 if device.type == "cuda" else end - begin
            totals[name] = totals.get(name, 0.0) + seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device) -> tuple[float, float | None, float | None, object]:
    """(seconds, peak memory MiB, peak reserved MiB, result) of one call. Memory: CUDA's max allocated
    during the call (weights included) and max reserved (the caching allocator's pools, CUDA graphs'
    private pools among them), else the resident-set increase of the process (VmHWM reset before)."""
    out = {}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        out["r"] = fn()
        sync(device)
        seconds = time.perf_counter() - start
        allocated, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        return seconds, allocated / 2**20, reserved / 2**20, out["r"]

    def call():
        start = time.perf_counter()
        out["r"] = fn()
        out["t"] = time.perf_counter() - start

    peak = peak_rss_delta(call)
    return out["t"], None if peak is None else peak / 2**20, None, out["r"]


def matmul_tflops(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul rate of this device and dtype, TFLOP/s (best of several products)."""
    n, repeats = (8192, 10) if device.type == "cuda" else (2048, 5)
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


def flops_per_image(components: Components, height: int, width: int, steps: int, cfg: bool) -> int:
    """Counted FLOPs of one image: text encoder + steps × U-Net (CFG batch 2) per sample + one VAE decode."""
    factor = vae_scale_factor(components.vae)
    batch = 2 if cfg else 1
    unet = unet_step_flops(
        components.unet, (height // factor, width // factor), batch, components.tokenizer.model_max_length
    )
    return (
        text_encoder_flops(components.text_encoder, batch)
        + steps * unet
        + vae_decode_flops(components.vae, height, width)
    )


def load(args, device: torch.device, dtype: torch.dtype) -> tuple[Components, str]:
    if args.model == "sd14":
        return sd14_random(dtype, str(device)), "SD v1.4 architecture, random weights"
    components = load_components(args.model)
    for m in (components.unet, components.vae, components.text_encoder):
        m.to(device=device, dtype=dtype)
    return components, f"{args.model} (real weights)"


def run(args: argparse.Namespace) -> list[dict]:
    """Benchmark each batch size of `args`; one table (dict) per batch size, also printed and, with `--out`, written."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.gpu else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    components, what = load(args, device, dtype)
    height = args.height or default_size(components.unet, components.vae)
    fast_parts = None
    if args.fast:  # a copy, so that fast mode's in-place changes leave the exact variants alone
        fast_parts = Components(
            components.tokenizer,
            components.text_encoder,
            copy.deepcopy(components.unet),
            components.vae,
            components.scheduler_config,
        )
        print(f"fast mode on {device.type}: {fast_settings(device)}", flush=True)
    peak = matmul_tflops(device, dtype)
    flops = flops_per_image(components, height, height, args.steps, args.guidance > 1)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    header = (
        f"\n{what}; {height}×{height}, {args.scheduler}, {args.steps} steps, guidance {args.guidance}, "
        f"{args.dtype}, {device.type} ({where}); {args.repeats} alternating repeats, medians\n"
        f"counted FLOPs per image: {flops / 1e12:.4f} TFLOP; measured {args.dtype} matmul: {peak:.3f} TFLOP/s"
    )
    lines, tables = [header], []
    print(header, flush=True)
    for batch in args.batch:
        table = {"dtype": args.dtype, "device": device.type, "where": where, "batch": batch}
        table.update(bench_batch(args, components, fast_parts, device, batch, height, flops, peak))
        tables.append(table)
        lines.append(markdown(table, args.batches))
        print(lines[-1], flush=True)
    if args.out:
        write_report(args.out, "\n".join(lines), tables)
    return tables


def bench_batch(args, components, fast_parts, device, batch, height, flops, peak) -> dict:
    """Time every variant at this batch size: {"rows": one dict of figures per variant, "notes": [...]}.

    A figure that was not measured is None: peak memory off CUDA and Linux, the image difference of
    `Trainer.predict` (it returns rows, not an image tensor)."""
    n_images = batch * args.batches
    prompts = (PROMPTS * n_images)[:n_images]
    rows = read_rows(prompts, seed=0)
    chunks = [rows[i : i + batch] for i in range(0, n_images, batch)]
    settings = dict(num_inference_steps=args.steps, eta=0.0, height=height, width=height)
    pipe = reference_pipeline(components, args.scheduler)

    def reference():
        out = []
        for chunk in chunks:
            pipe.scheduler = build_scheduler(args.scheduler, components.scheduler_config)
            gens = [torch.Generator("cpu").manual_seed(r["seed"]) for r in chunk]
            out.append(
                pipe(
                    [r["prompt"] for r in chunk],
                    negative_prompt=[""] * len(chunk),
                    generator=gens,
                    output_type="pt",
                    guidance_scale=args.guidance,
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
                    build_scheduler(args.scheduler, components.scheduler_config),
                    ClassifierFreeGuidance(args.guidance),
                    [r["prompt"] for r in chunk],
                    [""] * len(chunk),
                    [r["seed"] for r in chunk],
                    **settings,
                ).images
            )
        return torch.cat(out)

    def module_on(parts_: Components, fast: bool) -> LatentDiffusionModule:
        sampling = Sampling(
            scheduler=args.scheduler,
            num_inference_steps=args.steps,
            height=height,
            width=height,
            decode_fp32="never",  # decode in the model's dtype, as the pipeline does
            fast=fast,
        )
        return LatentDiffusionModule.from_components(
            parts_, sampling=sampling, guidance=ClassifierFreeGuidance(args.guidance)
        )

    module = module_on(components, fast=False)
    precision = {"fp32": "32-true", "bf16": "bf16-true", "fp16": "16-true"}[args.dtype]
    trainer = Trainer(
        strategy=KeepOnDevice(device=device),
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    loader = DataLoader(PromptRows(rows), batch_size=batch, collate_fn=collate)

    variants = {
        "pipeline": reference,
        "ours, bare loop": lambda: ours(components),
        "ours, Trainer.predict": lambda: trainer.predict(module, loader),
    }
    notes = []
    with torch.inference_mode():
        ours(components), reference()  # warm-up
        if fast_parts is not None:
            fast_module = module_on(fast_parts, fast=True)
            try:
                start = time.perf_counter()
                trainer.predict(fast_module, loader)  # makes the copy fast, compiles for this shape; untimed
                notes.append(f"fast mode's first call (compilation) took {time.perf_counter() - start:.1f} s")
                variants[FAST] = lambda: ours(fast_parts)  # the same compiled U-Net
                variants[FAST_TRAINER] = lambda: trainer.predict(fast_module, loader)
            except Exception as error:  # report and go on with the exact variants
                notes.append(f"fast mode failed: {type(error).__name__}: {first_line(error)[:300]}")
        results = {name: [] for name in variants}
        images, shares, reserved = {}, {name: [] for name in variants}, {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():  # alternate, so drift hits every variant alike
                totals = {}
                with timed_modules(components, totals, device):
                    seconds, memory, pool, out = measure(fn, device)
                results[name].append((seconds, memory))
                reserved[name].append(pool or 0)
                shares[name].append((totals.get("unet", 0) + totals.get("vae", 0)) / seconds)
                if not isinstance(out, list):  # Trainer.predict returns rows, not an image tensor
                    images[name] = out.cpu()  # off the GPU, so it does not count in the next variant's peak
                del out

    ref_time = statistics.median(s for s, _ in results["pipeline"])
    ref_mem = statistics.median((m or 0) for _, m in results["pipeline"])
    rows = []
    for name, runs in results.items():
        call = statistics.median(s for s, _ in runs)
        seconds = call / n_images
        memory = statistics.median((m or 0) for _, m in runs) if runs[0][1] is not None else None
        diff = (images[name].float() - images["pipeline"].float()).abs().max().item() if name in images else None
        rate = flops / seconds / 1e12
        rows.append(
            {
                "variant": name,
                "s/image": seconds,
                "images/s": 1 / seconds,
                "it/s (whole call)": args.steps * args.batches / call,
                "× pipeline time": call / ref_time,
                "peak MiB": memory,
                "× pipeline memory": memory / ref_mem if memory and memory >= 1 and ref_mem >= 1 else None,
                "peak reserved MiB": statistics.median(reserved[name]) or None,
                "max abs diff vs pipeline": diff,
                # The compiled copy has no hooks. On a host-bound GPU run the spans include idle GPU time.
                "U-Net+VAE share": None if name in (FAST, FAST_TRAINER) else statistics.median(shares[name]),
                "TFLOP/s": rate,
                "of matmul": rate / peak,
            }
        )
    return {"rows": rows, "notes": notes}


FORMATS = {
    "s/image": "{:.4f}",
    "images/s": "{:.2f}",
    "it/s (whole call)": "{:.2f}",
    "× pipeline time": "{:.3f}",
    "peak MiB": "{:.0f}",
    "× pipeline memory": "{:.2f}",
    "peak reserved MiB": "{:.0f}",
    "max abs diff vs pipeline": "{:.2e}",
    "U-Net+VAE share": "{:.0%}",
    "TFLOP/s": "{:.3f}",
    "of matmul": "{:.1%}",
}


def cell(column: str, value) -> str:
    """A table cell: "–" where the figure was not measured, "< 1" for a peak below a MiB."""
    if value is None:
        return "–"
    if column == "peak MiB" and value < 1:
        return "< 1"
    return FORMATS[column].format(value) if column in FORMATS else str(value)


def markdown(table: dict, batches: int) -> str:
    """The printed form of one table (`benchmark_report.parse_tables` reads it back)."""
    columns = list(table["rows"][0])
    lines = [
        f"\nbatch {table['batch']} × {batches} batches",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(cell(c, row[c]) for c in columns) + " |" for row in table["rows"]),
        *(f"- {note}" for note in table["notes"]),
    ]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, text: str, tables: list[dict]) -> None:
    """benchmark.md (the tables), benchmark.json (their figures), benchmark.png (speed vs the pipeline)
    and a TensorBoard run, in `folder`."""
    import json

    from ldm_lightning.lab.benchmark_report import report

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "benchmark.md").write_text(text + "\n")
    (folder / "benchmark.json").write_text(json.dumps(tables, indent=2) + "\n")
    report(tables, folder / "benchmark.png", folder, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-shapes", help="'sd14' (random weights), a folder, or an embedded name")
    parser.add_argument("--height", type=int, default=None, help="square image side (default: the model's)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--scheduler", default="ddim")
    parser.add_argument("--batch", type=int, nargs="+", default=[4], help="batch size(s), each its own table")
    parser.add_argument("--batches", type=int, default=2, help="batches per timed call")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fast", action="store_true", help="also time the opt-in fast mode (ldm_lightning/generation/fast.py)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--gpu", action="store_true", help="run on CUDA if present")
    parser.add_argument("--out", type=Path, default=None, help="also write benchmark.md/.png and TensorBoard here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()

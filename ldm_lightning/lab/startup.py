"""Start-up to finished PNGs: the quick start against a plain diffusers script, each in a fresh process.

    python -m ldm_lightning.lab.startup --repeats 4

Both make the same 8 images of the embedded model (the package's example prompts, DDIM 25, guidance
3, seeds 0–7) and write them as PNGs; the runs alternate so that drift hits both alike. Wall time
includes Python start-up and imports — what a user waits for. Prints a table of medians.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ldm_lightning.data import EXAMPLE_PROMPTS
from ldm_lightning.generation.components import ASSETS

# The reference: what a user would write with diffusers alone for the same images.
# It imports nothing of this package: model folder and prompts come as arguments.
PLAIN_DIFFUSERS = """
import json, sys, torch
from pathlib import Path

from ldm_lightning.generation.components import ASSETS
from ldm_lightning.data import EXAMPLE_PROMPTS
from diffusers import DDIMScheduler, StableDiffusionPipeline

model, prompts, out = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
pipe.set_progress_bar_config(disable=True)
generators = [torch.Generator("cpu").manual_seed(i) for i in range(len(prompts))]
images = pipe(prompts, num_inference_steps=25, guidance_scale=3.0, generator=generators).images
for i, image in enumerate(images):
    image.save(out / f"{i:05d}.png")
"""


def timed(cmd: list[str]) -> float:
    """Wall seconds of one fresh process; fails loudly if it fails."""
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4, help="fresh processes per variant, alternating")
    args = parser.parse_args(argv)
    prompts = json.dumps(EXAMPLE_PROMPTS)
    times: dict[str, list[float]] = {"plain diffusers script": [], "python -m ldm_lightning predict": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            plain = Path(tmp) / f"plain-{i}"
            plain.mkdir()
            plain_cmd = [sys.executable, "-c", PLAIN_DIFFUSERS, str(ASSETS / "tiny-shapes"), prompts, str(plain)]
            times["plain diffusers script"].append(timed(plain_cmd))
            ours = [sys.executable, "-m", "ldm_lightning", "predict", f"--output_dir={Path(tmp) / f'ours-{i}'}"]
            times["python -m ldm_lightning predict"].append(timed(ours))
    reference = statistics.median(times["plain diffusers script"])
    print(f"| variant | median s ({args.repeats} fresh processes) | × plain diffusers |")
    print("|---|---|---|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.2f} | {statistics.median(values) / reference:.2f} |")
    return times


if __name__ == "__main__":
    main()

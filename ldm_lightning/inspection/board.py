"""Attention overlays and trajectories in TensorBoard, read back from the run folder's files."""

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image


def log_inspection(trainer, run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """For each manifest row with inspection files: its overlay strip as `attention/<image>`, and its
    trajectory as the image series `trajectory/<image>` (the slider's step is the denoising step)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    loggers = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
    if not loggers:
        return
    for row in rows:
        stem = row["image"].removesuffix(".png")
        overlay = run_dir / f"{stem}.attention.png"
        trajectory = run_dir / f"{stem}.trajectory.png"
        frames = None
        if trajectory.is_file() and row.get("trajectory_steps"):
            strip = np.asarray(Image.open(trajectory).convert("RGB"))
            frames = np.split(strip, len(row["trajectory_steps"]), axis=1)
        for logger in loggers:
            if overlay.is_file():
                picture = np.asarray(Image.open(overlay).convert("RGB"))
                logger.experiment.add_image(f"attention/{stem}", picture, dataformats="HWC")
            if frames is not None:
                for step, frame in zip(row["trajectory_steps"], frames):
                    logger.experiment.add_image(f"trajectory/{stem}", frame, global_step=step, dataformats="HWC")
    for logger in loggers:
        logger.experiment.flush()

"""Putting a lab-bench result into TensorBoard: its table as text, its picture as an image."""

from pathlib import Path


def log_table(logdir: str | Path, tag: str, table: str, picture: str | Path | None = None) -> None:
    """Write `table` (markdown) and, if given, a PNG picture under `tag` in a TensorBoard run at `logdir`."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(logdir)) as writer:
        writer.add_text(tag, table)
        if picture is not None:
            writer.add_image(tag, np.asarray(Image.open(picture).convert("RGB")), dataformats="HWC")

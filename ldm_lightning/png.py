"""PNG bytes of an image array: what the run folder writes for images, grids and inspection pictures."""

import io

import numpy as np
from PIL import Image


def png_bytes(pixels: np.ndarray) -> bytes:
    """PNG bytes of an HWC uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()

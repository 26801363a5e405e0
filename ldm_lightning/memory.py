"""Peak memory: CUDA's allocator statistics on a GPU, the process's resident-set peak (VmHWM) on a CPU."""

import re
from pathlib import Path

import torch


def _status_kib(field: str) -> int:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())[1])


def reset_peak_rss() -> bool:
    """Reset this process's resident-set peak to its current size; False where Linux's proc(5) is missing.

    Writing 5 to /proc/self/clear_refs resets VmHWM (and getrusage's ru_maxrss) to VmRSS (Linux >= 4.0),
    so one process can measure the peaks of several runs in turn.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def reset_peak_memory() -> None:
    """Reset both peaks `peak_memory_mb` reads, so that the next run in this process reports its own: the resident
    set's (VmHWM) and the CUDA allocator's on the current GPU (only once CUDA is in use: before that there is no
    peak, and resetting would create a CUDA context for a CPU run)."""
    reset_peak_rss()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()


def peak_rss_delta(fn) -> int | None:
    """Bytes by which this process's resident set peaks above its level before `fn()` (None off Linux)."""
    if not reset_peak_rss():
        fn()
        return None
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) * 1024


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far, MiB: CUDA's max allocated on a GPU, else the process's max resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # Linux reports KiB


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a run: the GPU's free memory, or the host's MemAvailable (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return int(re.search(r"MemAvailable:\s+(\d+)", Path("/proc/meminfo").read_text())[1]) * 1024
    except (OSError, TypeError):
        return None


def sampling_bytes_lower_bound(channels: int, decoder_channels: int, height: int, width: int, batch: int, factor: int):
    """Bytes a batch needs at the least, counting only what cannot be avoided, at 2 bytes per value.

    The CFG batch of latents (2 × channels × H/f × W/f) and two activations of the VAE decoder's last,
    full-resolution block (decoder_channels × H × W each: its input and output) for every image. The
    true peak is several times higher; a run refused by this bound could not have finished.
    """
    latents = 2 * channels * (height // factor) * (width // factor)
    decoder = 2 * decoder_channels * height * width
    return batch * (latents + decoder) * 2


def check_fits(module, batch_size: int, accelerator: str | None) -> None:
    """Refuse, before anything is allocated, an image size that cannot fit in this device's memory."""
    from ldm_lightning.errors import UserError
    from ldm_lightning.generation.components import vae_scale_factor

    name = str(accelerator or "auto").lower()
    if name not in ("auto", "cpu", "gpu", "cuda"):
        return
    device = torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")
    free = available_bytes(device)
    need = sampling_bytes_lower_bound(
        module.unet.config.in_channels,
        module.vae.config.block_out_channels[0],
        module.height,
        module.width,
        batch_size,
        vae_scale_factor(module.vae),
    )
    if free is not None and need > free:
        raise UserError(
            f"model.sampling.height/width: {module.height}×{module.width} images need at least {need / 2**30:,.1f} GiB "
            f"for a batch of {batch_size} (latents and the VAE decoder's full-size activations), but {device.type} "
            f"has {free / 2**30:,.1f} GiB free; use a smaller size or --data.batch_size"
        )


def _glibc():
    """The C library if it is glibc (its allocator's `malloc_trim`), else None."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _glibc()


def release_free_heap() -> None:
    """Hand the pages of the heap's free blocks back to the system (glibc's `malloc_trim`). A batch's activations
    are freed when it ends but leave the heap fragmented, so that over thousands of batches on a CPU the next
    batch's blocks land in fresh pages and the resident peak creeps up; trimming after each batch keeps it at one
    batch's working set. A few milliseconds; nothing where the C library is not glibc."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)

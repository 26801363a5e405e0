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

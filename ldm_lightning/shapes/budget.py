"""Recipes that train the tiny SD-v1-shaped components (tokenizer, CLIP, VAE) on ``shapes`` data."""

import time
from collections.abc import Callable
from typing import Any


def steps_for_minutes(
    minutes: float, build: Callable[[], Any], train: Callable[[Any, int], None], warmup: int = 3, timed: int = 5
) -> int:
    """How many steps fit in ``minutes``, timed by ``train(model, n)`` on a throw-away ``build()``.

    The first steps are slow warm-up, so they run untimed; timing a throw-away model keeps the
    seeding of the real run exact.
    """
    probe = build()
    train(probe, warmup)
    start = time.time()
    train(probe, timed)
    return max(10, int(minutes * 60 / ((time.time() - start) / timed)))

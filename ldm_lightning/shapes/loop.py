"""The CLIP and VAE recipes' training loop and their step budget (the U-Net trains with `fit`)."""

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch


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


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup: int, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up times a cosine decay to 1% of the peak rate.

    The recipes' own schedule (`fit` uses diffusers' `get_cosine_schedule_with_warmup`): the shipped
    CLIP and VAE were trained with it, and the recipes reproduce them.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))),
    )


def train_loop(
    model: torch.nn.Module,
    batches: Iterable[Any],
    step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    steps: int,
    lr: float,
    weight_decay: float,
    warmup: int,
    clip_grad_norm: float | None = None,
    log_every: int = 50,
) -> list[float]:
    """AdamW over `steps` batches with `warmup_cosine`; `step_loss(batch)` gives the loss and the figures
    to log (its "loss" among them). Returns every step's loss; the model is left in eval mode."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = warmup_cosine(optimizer, warmup, steps)
    model.train()
    losses, start = [], time.time()
    for step, batch in zip(range(steps), batches):
        loss, figures = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(figures["loss"])
        if log_every and (step % log_every == 0 or step == steps - 1):
            shown = " ".join(f"{k} {v:.4f}" for k, v in figures.items())
            print(f"step {step:5d}/{steps} {time.time() - start:6.0f}s {shown}", flush=True)
    model.eval()
    return losses

"""The optimisation loop every newer training job shares (the prior's U-Net pretraining, distillation).

:func:`fit`: AdamW with a one-cycle schedule over the global batches of
:class:`mdnet.training.distributed.GlobalBatches`, each process training on its share of every batch
(the data-parallel pattern of :mod:`mdnet.training.distributed`), saved every few minutes and
resumable at the exact step.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from tqdm import tqdm

from mdnet.training import distributed as dist


def fit(accelerator: Accelerator, name: str, objective: nn.Module, data: dist.DrawDataset,
         sampler: dist.GlobalBatches, steps: int, lr: float, weight_decay: float, pct_start: float,
         clip: float | None = None, state_dir: Path | None = None, save_every_s: float = 300.0
         ) -> tuple[list[float], nn.Module]:
    """AdamW with a one-cycle schedule for ``steps`` optimizer steps over the sampler's global batches.

    ``objective(batch)`` returns per-item losses. With ``state_dir``, the state (weights, optimizer,
    random states, losses so far) is saved there every ``save_every_s`` seconds and at the end, and a
    later call resumes from it at the exact step (epoch ``e``'s batches depend only on the seed and
    ``e``, so the batches already trained are skipped, not redrawn). Returns (the per-step loss of
    the global batch, the trained objective, unwrapped).
    """
    if sampler.batches_per_epoch() == 0:
        raise ValueError(f"{name}: the batch ({sampler.batch_size}) is larger than the {sampler.n} training items")
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=weight_decay)
    model, opt = accelerator.prepare(objective, opt)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    loader = dist.train_loader(accelerator, data, sampler)
    losses: list[float] = []
    progress = dist.load_state(accelerator, state_dir) if state_dir is not None else None
    if progress is not None:
        if progress.get("steps") != steps or progress.get("name") != name:
            raise ValueError(f"{name}: {state_dir} holds a run of {progress.get('steps')} steps of "
                             f"{progress.get('name')!r}, not {steps}: use another --output or the same settings")
        losses = progress["losses"]
        with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": fast-forwarding on purpose
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(len(losses)):
                sched.step()
        accelerator.print(f"{name}: resumed after step {len(losses)} of {steps}")

    def save() -> None:
        if state_dir is not None:
            dist.save_state(accelerator, state_dir, {"name": name, "steps": steps, "losses": losses})

    bar = tqdm(total=steps, initial=len(losses), desc=name, disable=not accelerator.is_local_main_process)
    model.train()
    per_epoch = sampler.batches_per_epoch()
    epoch, step_loss, last_save = len(losses) // per_epoch, 0.0, time.time()
    while len(losses) < steps:
        loader.set_epoch(epoch)
        # Micro-batches of this epoch trained before a resume: whole global batches, skipped unseen.
        skip = (len(losses) - epoch * per_epoch) * accelerator.gradient_accumulation_steps
        seen: list[int] = []
        for batch in loader:
            if skip > 0:
                skip -= 1
                continue
            step_loss += dist.optimizer_step(accelerator, model, opt, sched, lambda b=batch: model(b).float(), batch,
                                             clip=clip)
            seen += dist.trained_indices(batch)
            if accelerator.sync_gradients:
                losses.append(dist.reduce_sum(accelerator, step_loss))
                step_loss = 0.0
                bar.update()
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if time.time() - last_save > save_every_s and len(losses) < steps:
                    save()
                    last_save = time.time()
                if len(losses) == steps:
                    break
        dist.debug_record(accelerator, job=name, epoch=epoch + 1, samples=seen)
        epoch += 1
    bar.close()
    save()
    model = accelerator.unwrap_model(model)
    model.eval()
    return losses, model

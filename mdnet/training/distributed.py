"""The one data-parallel pattern every training job follows (Hugging Face Accelerate).

A job runs the same on one process (``mdnet train ...``) and on many (``accelerate launch -m mdnet
train ...``, one node or several), and gives the same weights up to float error:

- ``--batch-size`` is the *global* batch, the samples behind one optimizer step. Each process
  takes ``batch / (processes x accumulation steps)`` of it per forward pass (Accelerate's
  ``split_batches``), so the steps per epoch and the learning-rate schedule do not depend on
  the number of processes or on ``--gradient-accumulation-steps``.
- :class:`GlobalBatches` is the only source of randomness in the data: per epoch, one
  generator seeded by ``(seed, epoch)`` draws the order and every sample's augmentation, the
  same on every process, and Accelerate hands each process its slice of each global batch.
  A sample is augmented the same way whichever process trains on it.
- :func:`batch_loss` normalises per-sample losses by the global batch's size, so the gradient
  that DDP averages is the gradient of the global batch's mean loss.
- Shared work happens once: :func:`shared_work_first` lets the main process build on-disk
  caches (aligned faces, downloads) before the others read them; :func:`sharded_map` splits
  inference (feature caches, validation) between the processes and gathers the results in
  order (``gather_for_metrics``: every face counted once); only the main process writes files
  (:func:`save_state` swaps the resumable state in atomically).
- Resuming restores the epoch: the state is saved after every epoch, and epoch ``e``'s order
  depends only on ``(seed, e)``, so a run may continue on a different number of processes.

``MDNET_DEBUG_RECORD=DIR`` (off by default) makes each process append JSON lines to
``DIR/rank-<process index>.jsonl``: the samples it trained on, per epoch, and the files it
wrote (:func:`debug_record`). The multi-process test reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

DEBUG_RECORD_ENV = "MDNET_DEBUG_RECORD"
PROGRESS_FILE = "progress.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every training job shares: mixed precision and gradient accumulation."""
    parser.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                        help="default: what `accelerate config` / `accelerate launch` say, else no")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=None,
                        help="split each global batch into this many passes per process (less memory, the same "
                             "result); default: what `accelerate launch` says, else 1")


def make_accelerator(mixed_precision: str | None = None, gradient_accumulation_steps: int | None = None) -> Accelerator:
    """An Accelerator that splits each global batch between the processes (``split_batches``).

    ``None`` takes the value from ``accelerate launch`` / ``accelerate config`` (or the default).
    """
    plugin = None
    launched = launched_processes()
    if gradient_accumulation_steps is not None:
        if gradient_accumulation_steps < 1:
            raise ValueError(f"--gradient-accumulation-steps must be at least 1, got {gradient_accumulation_steps}")
        plugin = GradientAccumulationPlugin(num_steps=gradient_accumulation_steps)
    # Started as several processes (torchrun, `accelerate launch --multi_gpu`) on a machine without a GPU:
    # Accelerate only joins them up (gloo, MULTI_CPU) when told to use the CPU.
    cpu = launched > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, gradient_accumulation_plugin=plugin,
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    if launched > 1 and accelerator.num_processes == 1:
        raise RuntimeError(f"started as {launched} processes, but Accelerate sees only this one: each would train "
                           "on all the data and write the same files (check `accelerate env`)")
    return accelerator


def launched_processes() -> int:
    """The number of processes the launcher started (WORLD_SIZE, or MPI's), 1 when started directly."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def shards(accelerator: Accelerator) -> int:
    """Forward passes behind one optimizer step: processes x gradient-accumulation steps."""
    return accelerator.num_processes * accelerator.gradient_accumulation_steps


def check_batch_size(accelerator: Accelerator, batch_size: int) -> str | None:
    """A usage error if ``batch_size`` cannot be split evenly between the forward passes, else None."""
    if batch_size < 1 or batch_size % shards(accelerator):
        return (f"--batch-size {batch_size} (the global batch) must be a multiple of processes x gradient "
                f"accumulation steps = {accelerator.num_processes} x {accelerator.gradient_accumulation_steps}")
    return None


def seed_per_process(accelerator: Accelerator, seed: int) -> None:
    """After the model is built (the same on every process): give each process its own global RNG stream.

    Only model-internal randomness (dropout, a VAE's posterior sample) uses it; the data's does not. One
    process keeps the stream it has, so single-process runs are unchanged.
    """
    if accelerator.num_processes > 1:
        set_seed(seed + accelerator.process_index)


@contextmanager
def shared_work_first(accelerator: Accelerator) -> Iterator[None]:
    """Run the block on the main process first, then on each node's first process, then on the rest.

    For on-disk caches and downloads: the main process builds them; on a shared file system the
    others only read them, and on per-node disks each node builds its own copy once. Each turn ends
    with a barrier that also tells every process whether a block failed so far (every process passes
    exactly two): when one did (a bad ``--init-from``, a full disk), the processes still waiting skip
    their turn and exit with a message pointing at the failed one's error, the failed one re-raises
    its own, and the ones that had finished stop too, instead of all waiting at a barrier forever.
    """
    turn = 0 if accelerator.is_main_process else 1 if accelerator.is_local_main_process else 2
    for ended in range(turn):
        if _turn_ended(accelerator, ended, failed=False):
            _finish_turns(accelerator, ended + 1)
            raise SystemExit(_FAILED_ELSEWHERE)
    try:
        yield
    except (Exception, SystemExit):  # parser.error() is a SystemExit
        _finish_turns(accelerator, turn, failed=True)
        raise
    for ended in range(turn, 2):
        if _turn_ended(accelerator, ended, failed=False):
            _finish_turns(accelerator, ended + 1)
            raise SystemExit(_FAILED_ELSEWHERE)


_FAILED_ELSEWHERE = ("error: another process failed in the work it does before the others (see its error "
                     "above); this one stops too")


def _turn_ended(accelerator: Accelerator, turn: int, failed: bool) -> bool:
    """The barrier that ends turn ``turn`` of :func:`shared_work_first`: whether any process's block failed."""
    return reduce_sum(accelerator, float(failed)) > 0


def _finish_turns(accelerator: Accelerator, start: int, failed: bool = False) -> None:
    """Pass the remaining barriers of :func:`shared_work_first` (turns ``start``..1), so no process waits alone."""
    for turn in range(start, 2):
        _turn_ended(accelerator, turn, failed)


class Draw(NamedTuple):
    """One sample of a global batch, as the sampler hands it to a job's dataset."""

    index: int        # into the job's data
    weight: float     # 1, or 0 for the padding that fills a short last batch
    count: int        # real samples in this global batch (the loss divides by it)
    aug: tuple        # this sample's random draws (the job's ``draw``)


class GlobalBatches(Sampler):
    """Seeded per-epoch global batches of ``range(n)``, with each sample's random draws.

    Per epoch, a generator seeded with ``seed * 1000 + epoch`` draws a permutation, then, per global
    batch, ``draw(indices, generator)`` (one tuple per sample: flips, shifts, noise, ...). Every
    process iterates the same sequence; Accelerate gives each its slice of every batch. The last
    short batch is dropped (``drop_last``) or kept; kept and shared between several forward passes
    (``shards > 1``), it is padded to the full batch with zero-weight repeats.
    """

    def __init__(self, n: int, batch_size: int, seed: int, draw: Callable[[torch.Tensor, torch.Generator],
                 Sequence[tuple]] | None = None, drop_last: bool = True, shards: int = 1):
        self.n, self.batch_size, self.seed, self.draw = n, batch_size, seed, draw
        self.drop_last, self.shards, self.epoch = drop_last, shards, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_per_epoch(self) -> int:
        """Optimizer steps per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __len__(self) -> int:
        short = self.n % self.batch_size
        if self.drop_last or not short:
            return self.n // self.batch_size * self.batch_size
        return self.n // self.batch_size * self.batch_size + (self.batch_size if self.shards > 1 else short)

    def __iter__(self) -> Iterator[Draw]:
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(self.n, generator=gen)
        for b in range(self.batches_per_epoch()):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            augs = list(self.draw(idx, gen)) if self.draw else [()] * len(idx)
            items = [Draw(int(i), 1.0, len(idx), tuple(a)) for i, a in zip(idx, augs, strict=True)]
            if len(items) < self.batch_size and self.shards > 1:
                items += [d._replace(weight=0.0) for d in (items * self.batch_size)[: self.batch_size - len(items)]]
            yield from items


class DrawDataset(Dataset):
    """The items of a job: ``make(draw)`` builds one sample's tensors; the index, weight and count ride along."""

    def __init__(self, n: int, make: Callable[[Draw], dict]):
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, d: Draw) -> dict:
        return {"index": d.index, "weight": d.weight, "count": d.count, **self.make(d)}


def train_loader(accelerator: Accelerator, dataset: Dataset, sampler: GlobalBatches) -> DataLoader:
    """``dataset`` (a :class:`DrawDataset`) in this process's micro-batches, through ``accelerator.prepare``.

    Set the epoch with ``loader.set_epoch(epoch)`` before iterating.
    """
    micro = sampler.batch_size // accelerator.gradient_accumulation_steps  # split between processes by Accelerate
    return accelerator.prepare_data_loader(DataLoader(dataset, batch_size=micro, sampler=sampler))


def batch_loss(accelerator: Accelerator, per_sample: torch.Tensor, batch: dict) -> tuple[torch.Tensor, float]:
    """This micro-batch's loss, scaled so the averaged gradient is the global batch's mean loss's.

    ``per_sample``: (b,) losses of the micro-batch; ``batch["weight"]``, ``batch["count"]`` come from
    the :class:`Draw` items. DDP averages over the processes and ``accelerator.backward`` divides by
    the accumulation steps, so each micro-batch contributes ``sum(weight * loss) / count``. Returns
    (the loss to back-propagate, this micro-batch's share of the global batch's mean loss).
    """
    weight = batch["weight"].to(per_sample.dtype)
    count = float(batch["count"][0])
    share = (per_sample.detach() * weight).sum() / count
    loss = (per_sample * weight).sum() / (count / shards(accelerator))
    return loss, float(share)


def optimizer_step(
    accelerator: Accelerator,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    per_sample_loss: Callable[[], torch.Tensor],
    batch: dict,
    clip: float | None = None,
) -> float:
    """Train on one micro-batch: loss, backward, and (when the accumulation completes) the optimizer step.

    ``per_sample_loss()`` computes the (b,) losses of ``batch``; it runs inside ``accelerator.accumulate``.
    The schedule steps with the optimizer (not on a skipped mixed-precision step); ``clip``: the gradient
    norm to clip to before a step. Returns this micro-batch's share of the global batch's mean loss.
    """
    with accelerator.accumulate(model):
        loss, share = batch_loss(accelerator, per_sample_loss(), batch)
        accelerator.backward(loss)
        if clip is not None and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if accelerator.sync_gradients and not opt.step_was_skipped:
            sched.step()
        opt.zero_grad(set_to_none=True)
    return share


def trained_indices(batch: dict) -> list[int]:
    """The dataset indices this micro-batch trained on (zero-weight padding left out)."""
    return [i for i, w in zip(batch["index"].tolist(), batch["weight"].tolist(), strict=True) if w > 0]


def reduce_sum(accelerator: Accelerator, value: float) -> float:
    """``value`` summed over the processes (collective: every process must call it)."""
    if accelerator.num_processes == 1:
        return value
    return float(accelerator.reduce(torch.tensor([value], dtype=torch.float64, device=accelerator.device), "sum"))


def _concat(parts: list) -> Any:
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return [torch.cat(p) for p in zip(*parts, strict=True)]


def _move(x: Any, device: torch.device | str) -> Any:
    return x.to(device) if isinstance(x, torch.Tensor) else [t.to(device) for t in x]


def sharded_map(accelerator: Accelerator, fn: Callable[[torch.Tensor], Any], n: int, batch_size: int = 64,
                desc: str | None = None) -> Any:
    """``fn`` over ``range(n)``, split between the processes; every process gets all results, in order.

    ``fn(indices)`` returns a tensor, or a list of tensors, with one row per index. Each process runs
    batches of ``batch_size`` of a prepared ``DataLoader``; ``gather_for_metrics`` joins them and drops
    the repeats that pad the last batch, so every index counts once. Results come back on the CPU.
    Collective: every process must call it. ``desc``: show a progress bar (main process) with this label.
    """
    loader = accelerator.prepare_data_loader(
        DataLoader(list(range(n)), batch_size=batch_size * accelerator.num_processes), device_placement=False
    )
    parts = []
    bar = tqdm(loader, desc=desc, unit="batch", disable=desc is None or not accelerator.is_main_process, leave=False)
    for idx in bar:
        out = _move(fn(idx), accelerator.device)
        parts.append(_move(accelerator.gather_for_metrics(out), "cpu"))
    if not parts:
        raise ValueError("sharded_map got nothing to do (n = 0)")
    return _concat(parts)


def save_state(accelerator: Accelerator, state_dir: Path, progress: dict) -> None:
    """``accelerator.save_state`` plus ``progress.json``, swapped in whole (an interrupted save keeps the last one).

    Collective: every process saves its own random state. ``progress`` (epoch, history, ...) is written
    by the main process.
    """
    state_dir = Path(state_dir)
    partial, old = state_dir.with_name(state_dir.name + ".partial"), state_dir.with_name(state_dir.name + ".old")
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / PROGRESS_FILE).write_text(json.dumps(progress, indent=2) + "\n")
        shutil.rmtree(old, ignore_errors=True)
        if state_dir.exists():
            state_dir.rename(old)
        partial.rename(state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_state(accelerator: Accelerator, state_dir: Path) -> dict | None:
    """Restore what :func:`save_state` wrote (any number of processes) and return its progress, or None."""
    state_dir = Path(state_dir)
    for folder in (state_dir, state_dir.with_name(state_dir.name + ".old")):  # .old: a save cut off mid-swap
        if (folder / PROGRESS_FILE).is_file():
            accelerator.load_state(str(folder))  # a process without a saved random state keeps its own
            return json.loads((folder / PROGRESS_FILE).read_text())
    return None


def debug_record(accelerator: Accelerator, **entry: Any) -> None:
    """Append ``entry`` to ``$MDNET_DEBUG_RECORD/rank-<i>.jsonl`` when that variable is set (tests, debugging)."""
    folder = os.environ.get(DEBUG_RECORD_ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    with open(Path(folder) / f"rank-{accelerator.process_index}.jsonl", "a") as f:
        f.write(json.dumps({"rank": accelerator.process_index, "processes": accelerator.num_processes, **entry})
                + "\n")

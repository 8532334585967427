"""One training loop for every adapter variant: AdamW, linear schedule with warmup, gradient
accumulation, per-epoch metrics and checkpoints, resume, and a clean stop on Slurm preemption.

Checkpoints are ``checkpoints/epoch_N/`` (after N complete epochs) or ``epoch_N-step_K/`` (stopped
by a signal K micro-batches into epoch N+1): the adapter folder plus ``state.pt`` with named keys
(optimizer, scheduler, RNG states, counters, partial sums, metric history, config). They are
written to a temp folder and renamed, kept under the run's local folder and logged as MLflow
artifacts, so a restart on another node downloads the newest one. The batch order of an epoch
depends only on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.

Every example goes through the processor once per run (:func:`encode`): prompt, image, target and,
for Qwen2-VL, its 3-D rotary positions; each epoch's batches are cut from those tensors. On the
tiny model the processor and ``get_rope_index`` took about a fifth of a step's CPU time when they
ran for every batch (``benchmarks/bench_train.py``).
"""
from __future__ import annotations

import math
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from sciqa.errors import SciqaError
from sciqa.slurm import job
from sciqa.train.collate import (
    Encoded,
    Example,
    collate_encoded,
    encode_examples,
    token_loss_sum,
)

STATE_FILE = "state.pt"
_CKPT = re.compile(r"^epoch_(\d+)(?:-step_(\d+))?$")


@dataclass
class LoopConfig:
    epochs: int = 3
    lr: float = 5e-3
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_length: int = 0
    seed: int = 0
    log_every: int = 10
    bf16: bool = False


def batches(examples: list, size: int, seed: int, epoch: int) -> list[list]:
    """This epoch's micro-batches: a shuffle that depends only on (seed, epoch)."""
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [[examples[i] for i in order[j: j + size]] for j in range(0, len(order), size)]


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the learning rate, then linear decay to 0: ``transformers``'
    ``get_linear_schedule_with_warmup`` (same factors, same state dict), without importing
    ``transformers.optimization``, which pulls in peft and its tuners (~0.7 s CPU per process)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_linear_factor, warmup=warmup_steps, total=total_steps))


def _linear_factor(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def encode(lm, examples: list[Example], cfg: LoopConfig) -> list[Encoded]:
    """Examples processed once per run (prompt, image, target, rotary positions): each epoch's
    batches are then cut from these tensors instead of going through the processor again."""
    return encode_examples(lm, examples, cfg.max_length, positions=True)


@torch.no_grad()
def evaluate_loss(adapted, lm, examples: list[Encoded], cfg: LoopConfig) -> float:
    """Token-mean cross-entropy on supervised tokens over ``examples`` (from :func:`encode`)."""
    adapted.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        batch = _to(collate_encoded(lm, examples[i: i + cfg.batch_size]), lm.device)
        labels = batch.pop("labels")
        lm.family.reset_state(lm.model)
        with _autocast(lm.device, cfg.bf16):
            logits = adapted(**batch).logits
        loss, n = token_loss_sum(logits, labels)
        total, count = total + float(loss), count + n
    return total / max(count, 1)


def _rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_key(name: str) -> tuple[int, int] | None:
    m = _CKPT.match(name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def newest_checkpoint(folder: Path) -> Path | None:
    found = [(checkpoint_key(p.name), p) for p in folder.glob("epoch_*") if (p / STATE_FILE).exists()]
    found = [(k, p) for k, p in found if k is not None]
    return max(found)[1] if found else None


def save_checkpoint(folder: Path, name: str, adapted, base_model: str, state: dict,
                    log_checkpoint: Callable[[Path], None] = lambda path: None) -> Path:
    """Adapter + state into ``folder/name`` atomically: written in a temp folder as ``name``, handed
    to ``log_checkpoint`` (the tracker) there, then renamed into place. So a local checkpoint is
    always one the tracker has too: a process killed between the two leaves none locally, and a
    restart elsewhere never misses one that this machine had."""
    from sciqa.adapters import save_adapter

    final = folder / name
    staging = folder / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    save_adapter(adapted, base_model, staging / name / "adapter")
    torch.save(state, staging / name / STATE_FILE)
    log_checkpoint(staging / name)
    shutil.rmtree(final, ignore_errors=True)
    (staging / name).rename(final)
    staging.rmdir()
    return final


def plot_losses(history: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ax.plot(epochs, [h["val_loss_golden"] for h in history], marker="o", label="validation (golden targets)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("token-mean cross-entropy")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass
class _Run:
    """What one training run carries between its parts: the recipe's state (torchtune-style)."""

    adapted: object
    lm: object
    base_model: str
    cfg: LoopConfig
    ckpt_dir: Path
    log_metrics: Callable[[dict, int], None]
    log_checkpoint: Callable[[Path], None]
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    history: list[dict]
    global_step: int = 0

    def state(self, epochs_done: int, batch_in_epoch: int, partial_sums: tuple) -> dict:
        return {"epochs_done": epochs_done, "batch_in_epoch": batch_in_epoch, "partial": partial_sums,
                "global_step": self.global_step, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "history": self.history,
                "seed": self.cfg.seed, "config": asdict(self.cfg)}

    def checkpoint(self, name: str, epochs_done: int, batch_in_epoch: int = 0,
                   partial_sums: tuple = (0.0, 0, 0.0)) -> Path:
        return save_checkpoint(self.ckpt_dir, name, self.adapted, self.base_model,
                               self.state(epochs_done, batch_in_epoch, partial_sums), self.log_checkpoint)


def _setup(adapted, lm, base_model: str, n_train: int, cfg: LoopConfig, run_dir: Path, log_metrics,
           log_checkpoint) -> _Run:
    """Seeds, optimizer and schedule for ``n_train`` examples, and the checkpoint folder."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    params = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = math.ceil(math.ceil(n_train / cfg.batch_size) / cfg.grad_accum) * cfg.epochs
    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    return _Run(adapted, lm, base_model, cfg, ckpt_dir, log_metrics, log_checkpoint, params, optimizer,
                linear_schedule(optimizer, int(cfg.warmup_ratio * total), total), [])


def _restore(run: _Run, checkpoint: Path) -> tuple[int, int, tuple]:
    """Load a checkpoint into ``run``; returns (epoch, batch in it, partial sums) to continue from."""
    from sciqa.adapters import load_into

    load_into(run.adapted, checkpoint / "adapter")
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    run.history, run.global_step = state["history"], state["global_step"]
    print(f"train: resumed from {checkpoint.name} (epoch {state['epochs_done'] + 1}, batch {state['batch_in_epoch']})")
    return state["epochs_done"], state["batch_in_epoch"], state["partial"]


def _epoch(run: _Run, encoded: list[Encoded], epoch: int, first: int, partial_sums: tuple) -> tuple[float, int, float]:
    """Micro-batches ``first``.. of one epoch; returns (loss sum, target tokens, seconds) over the epoch.

    Gradients are accumulated over ``grad_accum`` micro-batches and divided by the window's target
    tokens (an exact token mean). A stop signal saves a checkpoint at the next optimizer-step boundary."""
    from tqdm import tqdm

    cfg, lm = run.cfg, run.lm
    run.adapted.train()
    mbs = batches(encoded, cfg.batch_size, cfg.seed, epoch)
    loss_sum, tokens, seconds = partial_sums
    t0 = time.perf_counter()
    bar = tqdm(total=len(mbs), initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
    for i in range(first, len(mbs)):
        if job.requested() and i % cfg.grad_accum == 0 and i > first:  # a safe point: an optimizer step
            path = run.checkpoint(f"epoch_{epoch}-step_{i}", epoch, i,
                                  (loss_sum, tokens, seconds + time.perf_counter() - t0))
            bar.close()
            job.check(lambda name=path.name: f"checkpoint {name}")
        window_start = i - i % cfg.grad_accum
        if i == window_start or i == first:  # collate the accumulation window once: exact token-mean
            window = mbs[window_start: window_start + cfg.grad_accum]
            collated = [collate_encoded(lm, mb) for mb in window]
            n_window = sum(int((c["labels"][:, 1:] != -100).sum()) for c in collated)
        if n_window == 0:
            raise SciqaError(f"no target token left in a batch: max_length {cfg.max_length} is shorter than "
                             "the prompts; raise --max-length (0 = no limit)")
        batch = _to(collated[i - window_start], lm.device)
        labels = batch.pop("labels")
        lm.family.reset_state(lm.model)
        with _autocast(lm.device, cfg.bf16):
            logits = run.adapted(**batch).logits
        loss, n = token_loss_sum(logits, labels)
        _check_finite(run, loss.detach(), "the loss", epoch)
        (loss / max(n_window, 1)).backward()
        loss_sum, tokens = loss_sum + float(loss.detach()), tokens + n
        if i == window_start + len(window) - 1:
            _optimizer_step(run, float(loss.detach()) / max(n, 1), epoch)
        bar.set_postfix(loss=f"{loss_sum / max(tokens, 1):.4f}")
        bar.update(1)
    bar.close()
    return loss_sum, tokens, seconds + time.perf_counter() - t0


def _check_finite(run: _Run, value: torch.Tensor, what: str, epoch: int) -> None:
    """Stop at the first non-finite loss or gradient: every step after it would train on NaN, and the
    run must fail (with this reason) rather than finish with an adapter that is scored and reused."""
    if not bool(torch.isfinite(value).all()):
        raise SciqaError(f"training diverged: {what} is {float(value)} at epoch {epoch + 1}, step "
                         f"{run.global_step + 1}; lower --lr (now {run.cfg.lr:g}) or check the targets")


def _optimizer_step(run: _Run, last_loss: float, epoch: int) -> None:
    _check_finite(run, torch.nn.utils.clip_grad_norm_(run.params, 1.0), "the gradient norm", epoch)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    run.global_step += 1
    if run.cfg.log_every and run.global_step % run.cfg.log_every == 0:
        run.log_metrics({"train_loss_step": last_loss}, run.global_step)


def train(adapted, lm, base_model: str, train_set: list[Example], val_set: list[Example], cfg: LoopConfig,
          run_dir: Path, log_metrics: Callable[[dict, int], None], log_checkpoint: Callable[[Path], None],
          resume_from: Path | None = None) -> list[dict]:
    """Train ``adapted`` in place; returns the per-epoch metric history (all epochs, resumed or not).

    ``log_metrics(metrics, step)`` and ``log_checkpoint(folder)`` go to the tracker. A stop signal
    (:mod:`sciqa.slurm.job`) saves a checkpoint at the next optimizer-step boundary and stops (exit 75)."""
    run = _setup(adapted, lm, base_model, len(train_set), cfg, run_dir, log_metrics, log_checkpoint)
    train_encoded, val_encoded = encode(lm, train_set, cfg), encode(lm, val_set, cfg)
    start_epoch, first, partial_sums = 0, 0, (0.0, 0, 0.0)
    if resume_from is not None:
        start_epoch, first, partial_sums = _restore(run, resume_from)
    for epoch in range(start_epoch, cfg.epochs):
        loss_sum, tokens, seconds = _epoch(run, train_encoded, epoch, first, partial_sums)
        first, partial_sums = 0, (0.0, 0, 0.0)
        metrics = {"train_loss": loss_sum / max(tokens, 1),
                   "val_loss_golden": evaluate_loss(adapted, lm, val_encoded, cfg),
                   "epoch_seconds": seconds, "lr": run.scheduler.get_last_lr()[0]}
        run.history.append({"epoch": epoch + 1, **metrics})
        log_metrics(metrics, epoch + 1)
        path = run.checkpoint(f"epoch_{epoch + 1}", epoch + 1)
        if epoch + 1 < cfg.epochs:
            job.check(lambda name=path.name: f"checkpoint {name}")
    return run.history

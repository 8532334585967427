"""One training loop for every adapter variant: AdamW, linear schedule with warmup, gradient
accumulation, per-epoch metrics and checkpoints, resume, and a clean stop on Slurm preemption.

Checkpoints are ``checkpoints/epoch_N/`` (after N complete epochs) or ``epoch_N-step_K/`` (stopped
by a signal K micro-batches into epoch N+1): the adapter folder plus ``state.pt`` with named keys
(optimizer, scheduler, RNG states, counters, partial sums, metric history, config). They are
written to a temp folder and renamed, kept under the run's local folder and logged as MLflow
artifacts, so a restart on another node downloads the newest one. The batch order of an epoch
depends only on (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

import math
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from sciqa.collate import Example, collate, token_loss_sum
from sciqa.errors import SciqaError

STATE_FILE = "state.pt"
PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "stopped by a signal after a checkpoint; run again to resume"
_CKPT = re.compile(r"^epoch_(\d+)(?:-step_(\d+))?$")


class Preempted(Exception):
    """Training stopped on SIGUSR1/SIGTERM after saving a checkpoint (``signal`` names which)."""

    def __init__(self, signal_name: str, checkpoint: Path):
        super().__init__(f"stopped by {signal_name}; checkpoint {checkpoint}")
        self.signal = signal_name
        self.checkpoint = checkpoint


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


@torch.no_grad()
def evaluate_loss(adapted, lm, examples: list[Example], cfg: LoopConfig) -> float:
    """Token-mean cross-entropy on supervised tokens over ``examples``."""
    adapted.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), cfg.batch_size):
        batch = _to(collate(lm, examples[i: i + cfg.batch_size], cfg.max_length), lm.device)
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


def save_checkpoint(folder: Path, name: str, adapted, base_model: str, state: dict) -> Path:
    """Adapter + state into ``folder/name`` atomically (temp folder, then rename)."""
    from sciqa.adapters import save_adapter

    final = folder / name
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(adapted, base_model, tmp / "adapter")
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
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


def train(adapted, lm, base_model: str, train_set: list[Example], val_set: list[Example], cfg: LoopConfig,
          run_dir: Path, log_metrics: Callable[[dict, int], None], log_checkpoint: Callable[[Path], None],
          resume_from: Path | None = None, stop=None) -> list[dict]:
    """Train ``adapted`` in place; returns the per-epoch metric history (all epochs, resumed or not).

    ``log_metrics(metrics, step)`` and ``log_checkpoint(folder)`` go to the tracker; ``stop`` is an
    event set by a signal handler (checked at every micro-batch boundary)."""
    from transformers import get_linear_schedule_with_warmup

    from sciqa.adapters import load_into

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    params = [p for p in adapted.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(math.ceil(len(train_set) / cfg.batch_size) / cfg.grad_accum)
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total), total)
    history: list[dict] = []
    start_epoch, start_batch, partial = 0, 0, (0.0, 0, 0.0)
    global_step = 0
    if resume_from is not None:
        load_into(adapted, resume_from / "adapter")
        state = torch.load(resume_from / STATE_FILE, weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        history, global_step = state["history"], state["global_step"]
        start_epoch, start_batch, partial = state["epochs_done"], state["batch_in_epoch"], state["partial"]
        print(f"train: resumed from {resume_from.name} (epoch {start_epoch + 1}, batch {start_batch})")

    ckpt_dir = run_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    def state_now(epochs_done: int, batch_in_epoch: int, part) -> dict:
        return {"epochs_done": epochs_done, "batch_in_epoch": batch_in_epoch, "partial": part,
                "global_step": global_step, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": _rng_state(), "history": history,
                "seed": cfg.seed, "config": asdict(cfg)}

    from tqdm import tqdm

    for epoch in range(start_epoch, cfg.epochs):
        adapted.train()
        mbs = batches(train_set, cfg.batch_size, cfg.seed, epoch)
        first = start_batch if epoch == start_epoch else 0
        loss_sum, tokens, seconds = partial if epoch == start_epoch else (0.0, 0, 0.0)
        t0 = time.perf_counter()
        bar = tqdm(total=len(mbs), initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
        for i in range(first, len(mbs)):
            if stop is not None and stop.is_set() and i % cfg.grad_accum == 0 and i > first:
                seconds += time.perf_counter() - t0
                path = save_checkpoint(ckpt_dir, f"epoch_{epoch}-step_{i}", adapted, base_model,
                                       state_now(epoch, i, (loss_sum, tokens, seconds)))
                log_checkpoint(path)
                bar.close()
                raise Preempted(getattr(stop, "signal", None) or "signal", path)
            window_start = i - i % cfg.grad_accum
            if i == window_start or i == first:  # collate the accumulation window once: exact token-mean
                window = mbs[window_start: window_start + cfg.grad_accum]
                collated = [collate(lm, mb, cfg.max_length) for mb in window]
                n_window = sum(int((c["labels"][:, 1:] != -100).sum()) for c in collated)
            if n_window == 0:
                raise SciqaError(f"no target token left in a batch: max_length {cfg.max_length} is shorter than "
                                 "the prompts; raise --max-length (0 = no limit)")
            batch = _to(collated[i - window_start], lm.device)
            labels = batch.pop("labels")
            lm.family.reset_state(lm.model)
            with _autocast(lm.device, cfg.bf16):
                logits = adapted(**batch).logits
            loss, n = token_loss_sum(logits, labels)
            (loss / max(n_window, 1)).backward()
            loss_sum, tokens = loss_sum + float(loss.detach()), tokens + n
            if i == window_start + len(window) - 1:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                global_step += 1
                if cfg.log_every and global_step % cfg.log_every == 0:
                    log_metrics({"train_loss_step": float(loss.detach()) / max(n, 1)}, global_step)
            bar.set_postfix(loss=f"{loss_sum / max(tokens, 1):.4f}")
            bar.update(1)
        bar.close()
        seconds += time.perf_counter() - t0
        metrics = {"train_loss": loss_sum / max(tokens, 1),
                   "val_loss_golden": evaluate_loss(adapted, lm, val_set, cfg),
                   "epoch_seconds": seconds, "lr": scheduler.get_last_lr()[0]}
        history.append({"epoch": epoch + 1, **metrics})
        log_metrics(metrics, epoch + 1)
        path = save_checkpoint(ckpt_dir, f"epoch_{epoch + 1}", adapted, base_model,
                               state_now(epoch + 1, 0, (0.0, 0, 0.0)))
        log_checkpoint(path)
        if stop is not None and stop.is_set() and epoch + 1 < cfg.epochs:
            raise Preempted(getattr(stop, "signal", None) or "signal", path)
    return history

"""One training loop for every adapter: AdamW, linear warmup, gradient accumulation, resume, per-epoch checkpoints
(``epoch_N``; ``epoch_N-step_K`` when preemption stops it K micro-batches into epoch N+1), also in the tracker."""
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from sciqa.errors import SciqaError
from sciqa.files import build_folder
from sciqa.slurm import job
from sciqa.train.collate import IGNORE, Encoded, Example, collate_encoded, encode_examples, token_loss_sum

STATE_FILE = "state.pt"


@dataclass
class LoopConfig:
    epochs: int = 3
    lr: float = 5e-3
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    max_length: int = 0
    seed: int = 0
    log_every: int = 10
    bf16: bool = False


def linear_schedule(optimizer, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' ``get_linear_schedule_with_warmup`` without importing peft with it (~0.7 s CPU)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, partial(_linear_factor, warmup=warmup_steps, total=total_steps))


def _linear_factor(step: int, *, warmup: int, total: int) -> float:
    return step / max(1, warmup) if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def _loss(adapted, lm, batch: dict, bf16: bool) -> tuple[torch.Tensor, int]:
    batch = {k: v.to(lm.device) for k, v in batch.items()}
    labels = batch.pop("labels")
    lm.family.reset_state(lm.model)
    with torch.autocast(lm.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = adapted(**batch).logits
    return token_loss_sum(logits, labels)


@torch.no_grad()
def evaluate_loss(adapted, lm, examples: list[Encoded], cfg: LoopConfig) -> float:
    adapted.eval()
    sums = [_loss(adapted, lm, collate_encoded(lm, examples[i: i + cfg.batch_size]), cfg.bf16)
            for i in range(0, len(examples), cfg.batch_size)]
    return sum(float(loss) for loss, _ in sums) / max(sum(n for _, n in sums), 1)


def checkpoint_key(name: str) -> tuple[int, int] | None:
    m = re.fullmatch(r"epoch_(\d+)(?:-step_(\d+))?", name)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else None


def newest_checkpoint(folder: Path) -> Path | None:
    found = [(key, p) for p in folder.glob("epoch_*") if (key := checkpoint_key(p.name)) and (p / STATE_FILE).exists()]
    return max(found)[1] if found else None


@dataclass
class _Run:  # what one training run carries between its parts (torchtune-style)
    adapted: object
    lm: object
    base_model: str
    cfg: LoopConfig
    ckpt_dir: Path
    log_metrics: Callable[[dict, int], None]
    log_checkpoint: Callable[[Path], None]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    history: list[dict] = field(default_factory=list)
    global_step: int = 0

    def checkpoint(self, name: str, epochs_done: int, batch: int = 0, partial_sums: tuple = (0.0, 0, 0.0)) -> Path:
        state = {"epochs_done": epochs_done, "batch_in_epoch": batch, "partial": partial_sums,
                 "global_step": self.global_step, "optimizer": self.optimizer.state_dict(), "history": self.history,
                 "scheduler": self.scheduler.state_dict(), "config": asdict(self.cfg),  # config: its seed too
                 "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}

        def build(staging: Path) -> Path:
            self.adapted.save(staging / name / "adapter", self.base_model)
            torch.save(state, staging / name / STATE_FILE)
            self.log_checkpoint(staging / name)  # before the rename: a local checkpoint is one the tracker has too
            return staging / name

        return build_folder(self.ckpt_dir / name, build, STATE_FILE)

    def restore(self, checkpoint: Path) -> tuple[int, int, tuple]:
        """Returns (epoch, batch in it, partial sums) to continue from."""
        self.adapted.load_weights(checkpoint / "adapter")
        state = torch.load(checkpoint / STATE_FILE, weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"].get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.history, self.global_step = state["history"], state["global_step"]
        print(f"train: resumed from {checkpoint.name} (epoch {state['epochs_done'] + 1}, "
              f"batch {state['batch_in_epoch']})")
        return state["epochs_done"], state["batch_in_epoch"], state["partial"]

    def check_finite(self, value: torch.Tensor, what: str, epoch: int) -> None:
        """A non-finite loss or gradient fails the run: every later step would train on NaN."""
        if not bool(torch.isfinite(value).all()):
            raise SciqaError(f"training diverged: {what} is {float(value)} at epoch {epoch + 1}, step "
                             f"{self.global_step + 1}; lower --lr (now {self.cfg.lr:g}) or check the targets")


def _epoch(run: _Run, encoded: list[Encoded], epoch: int, first: int, partial_sums: tuple) -> tuple[float, int, float]:
    """Micro-batches ``first``.. of one epoch (their order depends only on seed and epoch) -> (loss sum, target tokens,
    seconds); gradients are divided by the accumulation window's target tokens (an exact token mean)."""
    cfg, lm = run.cfg, run.lm
    run.adapted.train()
    order = torch.randperm(len(encoded), generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch)).tolist()
    mbs = [[encoded[i] for i in order[j: j + cfg.batch_size]] for j in range(0, len(order), cfg.batch_size)]
    loss_sum, tokens, seconds = partial_sums
    t0 = time.perf_counter()
    bar = tqdm(total=len(mbs), initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch")
    for start in range(first, len(mbs), cfg.grad_accum):  # ``first`` starts a window: checkpoints are made there
        if job.requested() and start > first:  # a safe point: after an optimizer step
            path = run.checkpoint(f"epoch_{epoch}-step_{start}", epoch, start,
                                  (loss_sum, tokens, seconds + time.perf_counter() - t0))
            bar.close()
            job.check(lambda name=path.name: f"checkpoint {name}")
        window = [collate_encoded(lm, mb) for mb in mbs[start: start + cfg.grad_accum]]
        n_window = sum(int((c["labels"][:, 1:] != IGNORE).sum()) for c in window)  # > 0: fit_to_length saw to it
        for batch in window:
            loss, n = _loss(run.adapted, lm, batch, cfg.bf16)
            run.check_finite(loss.detach(), "the loss", epoch)
            (loss / n_window).backward()
            loss_sum, tokens = loss_sum + float(loss.detach()), tokens + n
            bar.set_postfix(loss=f"{loss_sum / max(tokens, 1):.4f}")
            bar.update(1)
        params = run.optimizer.param_groups[0]["params"]
        run.check_finite(torch.nn.utils.clip_grad_norm_(params, 1.0), "the gradient norm", epoch)
        run.optimizer.step()
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        run.global_step += 1
        if cfg.log_every and run.global_step % cfg.log_every == 0:
            run.log_metrics({"train_loss_step": float(loss.detach()) / max(n, 1)}, run.global_step)
    bar.close()
    return loss_sum, tokens, seconds + time.perf_counter() - t0


def train(adapted, lm, base_model: str, train_set: list[Example], val_set: list[Example], cfg: LoopConfig,
          run_dir: Path, log_metrics: Callable[[dict, int], None], log_checkpoint: Callable[[Path], None],
          resume_from: Path | None = None) -> list[dict]:
    """Train ``adapted`` in place -> per-epoch metric history; a stop signal checkpoints at the next step, exits 75."""
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    total = math.ceil(math.ceil(len(train_set) / cfg.batch_size) / cfg.grad_accum) * cfg.epochs
    run = _Run(adapted, lm, base_model, cfg, run_dir / "checkpoints", log_metrics, log_checkpoint, optimizer,
               linear_schedule(optimizer, int(cfg.warmup_ratio * total), total))
    train_encoded, val_encoded = (encode_examples(lm, examples, cfg.max_length, positions=True)
                                  for examples in (train_set, val_set))
    start_epoch, first, partial_sums = run.restore(resume_from) if resume_from is not None else (0, 0, (0.0, 0, 0.0))
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

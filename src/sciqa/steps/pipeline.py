"""The whole KD experiment (does KD beat golden training?) as one parent run with nested, cached children."""
from dataclasses import asdict, replace

import mlflow

from sciqa.adapters import VARIANTS
from sciqa.config import check_ranges, identity, operational
from sciqa.errors import SciqaError
from sciqa.eval.metrics import check_prerequisites
from sciqa.slurm import job
from sciqa.steps import MainConfig
from sciqa.steps import benchmark as bench
from sciqa.steps import train as training
from sciqa.steps.evaluate import EvaluateConfig, evaluate, evaluate_run
from sciqa.steps.report import compare
from sciqa.steps.score import ScoreConfig, score
from sciqa.tracking import runs
from sciqa.tracking.runs import step_run


def variants_of(cfg: MainConfig) -> list[str]:
    names = [v.strip() for v in cfg.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if bad or not names:
        raise SciqaError(f"unknown variant(s) {', '.join(bad) or '(none)'}; accepted: {', '.join(VARIANTS)}")
    return names


def seeds_of(cfg: MainConfig) -> list[int]:
    try:
        seeds = [int(s) for s in cfg.seeds.split(",") if s.strip()]
    except ValueError:
        raise SciqaError(f"--seeds must be comma-separated integers, got '{cfg.seeds}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SciqaError(f"--seeds must name at least one seed, each once, got '{cfg.seeds}'")
    return seeds


def _child(parent_id: str, name: str, fn, *args, **kwargs):
    """Run one step; a failure tags the parent with the step's name before it propagates."""
    try:
        return fn(*args, parent_run_id=parent_id, **kwargs)
    except job.Stopped:
        raise  # not a failure: the step saved its state, and the parent resumes it when run again
    except BaseException:
        mlflow.MlflowClient().set_tag(parent_id, "sciqa.failed_step", name)
        raise


def teacher_config(cfg: MainConfig) -> bench.BenchmarkConfig:
    """The standalone KD training's teacher benchmark (the same run), with main's batch size and --force."""
    kd = next(t for (_, is_kd, _), t in train_configs(cfg, "").items() if is_kd)
    return replace(training.teacher_benchmark_config(kd), batch_size=cfg.batch_size, force=cfg.force)


def base_config(cfg: MainConfig) -> bench.BenchmarkConfig:
    same = ("model", "dataset", "setting", "answer_mode", "choice_score", "max_new_tokens", "batch_size", "workdir",
            "force")
    return bench.BenchmarkConfig(split=cfg.eval_split, limit=cfg.eval_limit, **{k: getattr(cfg, k) for k in same})


def train_configs(cfg: MainConfig, teacher_run: str) -> dict:
    """(variant, kd, seed) -> the training config of that adapter; both learn from ``teacher_run``/the CSV."""
    same = {k: getattr(cfg, k) for k in ("model", "dataset", "setting", "teacher_model", "teacher_answer_mode",
                                         "teacher_max_new_tokens", "kd_filter", "golden_on", "epochs", "lr",
                                         "prefix_len", "limit", "workdir", "force")}
    taught = cfg.golden_on == "same"  # golden needs the teacher too: to train on KD's problems
    return {(variant, kd, seed): training.TrainConfig(
        **same, variant=variant, teacher=kd, teacher_run=teacher_run if kd or taught else "",
        teacher_csv=cfg.teacher_csv if kd or taught else "", batch_size=cfg.train_batch_size, val_limit=cfg.eval_limit,
        seed=seed) for seed in seeds_of(cfg) for variant in variants_of(cfg) for kd in (False, True)}


def score_config(cfg: MainConfig, train_run: str) -> ScoreConfig:
    """The base benchmark's evaluation, with ``train_run``'s adapter on its own base model."""
    return ScoreConfig(**{**asdict(base_config(cfg)), "model": "", "adapter_run": train_run})


def check(cfg: MainConfig) -> None:
    """Every child's input, before the parent run starts (a bad teacher CSV fails here, not mid-way)."""
    check_ranges(cfg)
    check_prerequisites()
    bench.check(base_config(cfg))
    if not (cfg.teacher_run or cfg.teacher_csv):
        bench.check(teacher_config(cfg))
    first = seeds_of(cfg)[0]  # seeds change nothing a check looks at
    for tcfg in (t for (_, _, seed), t in train_configs(cfg, cfg.teacher_run).items() if seed == first):
        training.check(tcfg)


def _teacher(cfg: MainConfig, pid: str) -> tuple[str, str]:
    """(the teacher run KD learns from, '' for a CSV teacher; the run holding its evaluation on train)."""
    if cfg.teacher_csv:
        teacher_eval = EvaluateConfig(csv=cfg.teacher_csv, dataset=cfg.dataset)
        return "", _child(pid, "evaluate teacher csv", evaluate, teacher_eval)
    if cfg.teacher_run:  # a run made elsewhere may not be evaluated yet (ours evaluate themselves)
        evaluate_run(cfg.teacher_run, dataset=cfg.dataset)
        return cfg.teacher_run, cfg.teacher_run
    run_id = _child(pid, "teacher benchmark", bench.benchmark, teacher_config(cfg)).run_id
    return run_id, run_id


def main(cfg: MainConfig, attach: str | None = None) -> str:
    """Run (or reuse) every step as a child of one parent run; returns the parent run id."""
    check(cfg)
    runs.setup()
    params = {**identity(cfg), "variants": ",".join(variants_of(cfg)), "seeds": ",".join(map(str, seeds_of(cfg)))}
    with step_run("main", params, {"sciqa.model": cfg.model}, "main", cfg.force, settings=operational(cfg),
                  reuse=False, attach=attach) as parent:
        pid = parent.run_id
        teacher_run, teacher_scores = _teacher(cfg, pid)
        trained = {key: _child(pid, f"train {key[0]} {'kd' if key[1] else 'golden'} seed {key[2]}", training.train,
                               tcfg).run_id for key, tcfg in train_configs(cfg, teacher_run).items()}
        base = _child(pid, "base benchmark", bench.benchmark, base_config(cfg)).run_id
        scored = {key: _child(pid, f"score {key[0]} {'kd' if key[1] else 'golden'} seed {key[2]}", score,
                              score_config(cfg, train_id)).run_id for key, train_id in trained.items()}
        table = compare(base, trained, scored, teacher_scores, cfg)
    print(table)  # one table; the sentences and every metric are in compare/comparison.md
    return parent.run_id

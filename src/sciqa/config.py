"""Step configs as dataclasses: one declaration per option gives its default, help, range and role.

Every field is either part of the step's *identity* (what the result depends on: the cache key
and the params compared on resume) or *operational* (how the work is carried out: batch size,
concurrency, work folder; logged as a param, but changing it resumes instead of starting over).
No field is a secret: keys and tokens come from the environment and are never config values.
Values that may carry credentials (a URL with ``user:pass@``) are redacted before logging.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import field
from typing import Any

from sciqa.errors import SciqaError

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # models.base.DTYPES plus auto (no torch import here)
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")
# Environment variables whose values are secrets (HF_TOKEN, OPENAI_API_KEY, MLFLOW_TRACKING_PASSWORD,
# MLFLOW_TRACKING_TOKEN, AWS_SECRET_ACCESS_KEY, ...): their values are redacted wherever they appear.
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|PASSWORD|PASS|SECRET)$")
_AUTH_HEADER = re.compile(r"\b(Basic|Bearer|Token)\s+[A-Za-z0-9._~+/=-]{6,}")  # an API echoing the header
_SHORTEST_SECRET = 6  # shorter values ("1", "true") are settings, and redacting them would garble text


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, choices: tuple | None = None, operational: bool = False) -> Any:
    """A config field: ``min``/``max`` are inclusive bounds, ``above`` an exclusive lower bound."""
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices, "operational": operational}
    return field(default=default, metadata=meta)


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


_KEY_VARIABLES: set[str] = set()  # variables a user named as holding a key (--api-key-env), whatever their name


def treat_as_secret(variable: str) -> None:
    """Redact this environment variable's value too: ``--api-key-env MYVAR`` need not end in ``_KEY``."""
    _KEY_VARIABLES.add(variable)


def secret_values(env=os.environ) -> list[str]:
    """The values of the secret-named environment variables, longest first (a key inside a longer one)."""
    found = {v for k, v in env.items()
             if (_SECRET_NAME.search(k.upper()) or k in _KEY_VARIABLES) and len(v) >= _SHORTEST_SECRET}
    return sorted(found, key=len, reverse=True)


def redact(value: str) -> str:
    """The one redaction, for params, tags, errors and log lines: ``https://user:pass@host/v1`` ->
    ``https://***@host/v1``, the value of any secret environment variable and an ``Authorization``
    header's credentials (``Basic`` is the URL's user:pass in base64) -> ``***``."""
    for secret in secret_values():
        value = value.replace(secret, "***")
    return _AUTH_HEADER.sub(r"\1 ***", _USERINFO.sub(r"\g<scheme>***@", value))


def redact_logging() -> None:
    """Every log record (MLflow's, urllib3's: they name URLs) goes through :func:`redact`. Idempotent."""
    import logging

    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            record.msg, record.args = redact(record.getMessage()), ()
        except Exception:  # noqa: BLE001 - a malformed record: logging reports it when it is emitted
            pass
        return record

    factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def identity(cfg, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields that define the result (cache key, resume check); ``ignore``: unused ones."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if not f.metadata.get("operational") and f.name not in ignore}


def operational(cfg) -> dict[str, Any]:
    """How the work is carried out: logged, not keyed (``force`` is an instruction, not a setting)."""
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
            if f.metadata.get("operational") and f.name != "force"}


def check_ranges(cfg) -> None:
    """Every numeric bound and choice list declared on the fields, as one line naming the option."""
    for f in dataclasses.fields(cfg):
        value, meta = getattr(cfg, f.name), f.metadata
        if meta.get("choices") is not None and value not in meta["choices"]:
            raise SciqaError(f"unknown {f.name.replace('_', ' ')} '{value}'; accepted: "
                             f"{', '.join(map(str, meta['choices']))}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):  # `--lr inf` passes every bound check below and trains to NaN
            raise SciqaError(f"{cli_name(f.name)} must be a finite number (got {value})")
        if meta.get("min") is not None and value < meta["min"]:
            raise SciqaError(f"{cli_name(f.name)} must be at least {meta['min']} (got {value})")
        if meta.get("max") is not None and value > meta["max"]:
            raise SciqaError(f"{cli_name(f.name)} must be at most {meta['max']} (got {value})")
        if meta.get("above") is not None and not value > meta["above"]:
            raise SciqaError(f"{cli_name(f.name)} must be greater than {meta['above']} (got {value})")


def as_param(value: Any) -> str:
    """A value as MLflow stores it and MLproject writes it (``true``/``false`` for booleans)."""
    return str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)


def params_of(values: dict[str, Any]) -> dict[str, str]:
    """Params as strings, with credentials in URLs redacted."""
    return {k: redact(as_param(v)) for k, v in values.items()}

"""Step config fields (default, help, range; *identity* keys the result, *operational* is logged) and redaction."""
import dataclasses
import logging
import math
import operator
import os
import re
from contextlib import suppress
from functools import cache
from typing import Any

from sciqa.errors import SciqaError

DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # models.base.DTYPES plus auto (no torch import here)
USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]+@")  # a URL with credentials in it
# a credential's variable (USERNAME: basic auth's half; CREDENTIALS: e.g. GOOGLE_APPLICATION_CREDENTIALS)
_SECRET_NAME = re.compile(r"(^|_)(TOKEN|KEY|PASSWORD|PASS|SECRET|CREDENTIALS?|AUTH|COOKIE|PRIVATE)($|_)|_USERNAME$")
_AUTH_HEADER = re.compile(r"\b(Basic|Bearer|Token)\s+[A-Za-z0-9._~+/=-]{6,}")  # an API echoing the header
_BOUNDS = (("min", "at least", operator.lt), ("max", "at most", operator.gt), ("above", "greater than", operator.le))
KEY_VARIABLES: set[str] = set()  # variables a user named as holding a key (--api-key-env), whatever their name


def option(default: Any, help: str, *, min: float | None = None, max: float | None = None,
           above: float | None = None, choices: tuple | None = None, operational: bool = False) -> Any:
    """A config field: ``min``/``max`` are inclusive bounds, ``above`` an exclusive lower bound."""
    meta = {"help": help, "min": min, "max": max, "above": above, "choices": choices, "operational": operational}
    return dataclasses.field(default=default, metadata=meta)


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def is_secret_name(name: str) -> bool:
    """A variable holding a credential: its value is redacted and never written into a Slurm job file."""
    return bool(_SECRET_NAME.search(name.upper())) or name in KEY_VARIABLES


def redact(value: str) -> str:
    """The one redaction (params, tags, errors, logs): URL userinfo, secret variables' values, auth headers."""
    found = {v for k, v in os.environ.items() if is_secret_name(k) and len(v) >= 6}  # "1", "true": settings
    for secret in sorted(found, key=len, reverse=True):  # a key inside a longer one
        value = value.replace(secret, "***")
    return _AUTH_HEADER.sub(r"\1 ***", USERINFO.sub(r"\g<scheme>***@", value))


@cache
def redact_logging() -> None:
    """Every log record (MLflow's, urllib3's: they name URLs) goes through :func:`redact`; once per process."""
    make = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        with suppress(Exception):  # a malformed record: logging reports it when it is emitted
            record.msg, record.args = redact(record.getMessage()), ()
        return record

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
        for key, words, bad in _BOUNDS:
            if meta.get(key) is not None and bad(value, meta[key]):
                raise SciqaError(f"{cli_name(f.name)} must be {words} {meta[key]} (got {value})")


def as_param(value: Any) -> str:
    """A value as MLflow stores it and MLproject writes it (``true``/``false`` for booleans)."""
    return str(value).lower() if isinstance(value, bool) else "" if value is None else str(value)


def params_of(values: dict[str, Any]) -> dict[str, str]:
    """Params as strings, with credentials in URLs redacted."""
    return {k: redact(as_param(v)) for k, v in values.items()}

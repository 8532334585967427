"""Any OpenAI-compatible chat-completions API (OpenAI, Gemini's compatible endpoint, vLLM or
``transformers serve`` on a node): the image as a base64 PNG data URL first, then the prompt.

    sciqa benchmark --backend openai --model gemini-1.5-flash \\
        --api-base https://generativelanguage.googleapis.com/v1beta/openai --api-key-env GEMINI_API_KEY
    sciqa benchmark --backend openai --model my-model --api-base http://127.0.0.1:8000/v1 --api-key-env ''

Greedy (temperature 0), ``max_tokens`` = ``--max-new-tokens``; ``--concurrency`` requests in
flight, each with ``--timeout`` seconds and up to ``--max-retries`` retries with exponential
backoff on 429, 5xx and connection errors. The key is read from the environment only: it is
never a param, a tag or part of any output. Token counters (and the cost, when prices are given)
are logged as MLflow metrics, cumulative over resumed runs.
"""
from __future__ import annotations

import base64
import io
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from sciqa.backends.base import Backend, Generation
from sciqa.config import treat_as_secret
from sciqa.data.problems import Problem
from sciqa.errors import SciqaError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529}
BACKOFF_BASE_S = 1.0  # first retry waits about 1 s, then 2, 4, ... (capped)
BACKOFF_CAP_S = 60.0
COUNTERS = ("api_requests", "api_retries", "api_prompt_tokens", "api_completion_tokens")


def image_data_url(image) -> str:
    """A PIL image as a ``data:image/png;base64,...`` URL."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def chat_request(model: str, image, prompt: str, max_new_tokens: int) -> dict:
    """The request body: one user turn, image first then the text (the study's protocol), greedy."""
    return {"model": model,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": image_data_url(image)}},
                {"type": "text", "text": prompt}]}],
            "temperature": 0, "max_tokens": max_new_tokens, "n": 1, "stream": False}


def output_cleaner(model: str, revision: str | None = None):
    """``clean_output`` of the model's family when the name is a tiny model or a local folder;
    for remote API models (names the hub does not know), cut at every known turn marker."""
    from pathlib import Path

    from sciqa import models

    if model in models.TINY_MODELS or Path(model).expanduser().is_dir():
        return models.resolve(model, revision)[1].clean_output
    markers: list[str] = []
    for ref in models.FAMILIES:
        fam = models.family(ref)
        markers += [m for m in (fam.end_of_turn, *fam.turn_markers) if m not in markers]

    def clean(text: str) -> str:
        for marker in markers:
            text = text.split(marker, 1)[0]
        return text.strip()

    return clean


class APIError(SciqaError):
    """A request that failed for good (not retryable, or retries exhausted)."""


class OpenAIBackend(Backend):
    name = "openai"

    @staticmethod
    def options(cfg) -> dict:
        """The backend's options from a generation config (the fields its registry entry names)."""
        from sciqa.backends import BACKEND_OPTIONS

        return {name: getattr(cfg, name) for name in BACKEND_OPTIONS["openai"]}

    @classmethod
    def check(cls, cfg) -> None:
        o = cls.options(cfg)
        if not o["api_base"]:
            raise SciqaError("backend 'openai' needs --api-base URL of an OpenAI-compatible API "
                             "(e.g. http://127.0.0.1:8000/v1)")
        if not o["api_base"].startswith(("http://", "https://")):
            raise SciqaError(f"--api-base must be an http(s) URL, got '{o['api_base']}'")
        if o["api_key_env"] and not os.environ.get(o["api_key_env"]):
            raise SciqaError(f"API key missing: set the environment variable {o['api_key_env']} "
                             "(or name another one with --api-key-env; --api-key-env '' sends no key)")

    @classmethod
    def from_config(cls, cfg, adapter: str | None = None) -> OpenAIBackend:
        if adapter:
            raise SciqaError("backend 'openai' cannot apply a local adapter; score adapters with --backend hf")
        cls.check(cfg)
        o = cls.options(cfg)
        env = o.pop("api_key_env")
        if env:
            treat_as_secret(env)
        key = os.environ.get(env, "") if env else ""
        backend = cls(cfg.model, api_key=key, max_new_tokens=cfg.max_new_tokens,
                      clean=output_cleaner(cfg.model, cfg.revision or None), **o)
        backend.resume_counters()
        return backend

    def __init__(self, model: str, api_base: str, api_key: str = "", max_new_tokens: int = 256,
                 concurrency: int = 4, timeout: float = 120.0, max_retries: int = 5,
                 prompt_cost_per_1k: float = 0.0, completion_cost_per_1k: float = 0.0, clean=None):
        self.model = model
        self.url = api_base.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout
        self.max_retries = max_retries
        self.prices = (prompt_cost_per_1k, completion_cost_per_1k)
        self.clean = clean or (lambda text: text.strip())
        self.counters = dict.fromkeys(COUNTERS, 0.0)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sciqa-api")

    def __repr__(self) -> str:  # never show the headers (the key)
        return f"OpenAIBackend(model={self.model!r}, url={self.url!r})"

    def resume_counters(self) -> None:
        """Start the counters from the active run's metrics, so a resumed run's totals add up."""
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return
        logged = mlflow.get_run(run.info.run_id).data.metrics
        for name in COUNTERS:
            self.counters[name] = float(logged.get(name, 0.0))

    def metrics(self) -> dict[str, float]:
        out = dict(self.counters)
        if any(self.prices):
            out["api_cost"] = (out["api_prompt_tokens"] * self.prices[0]
                               + out["api_completion_tokens"] * self.prices[1]) / 1000
        return out

    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        bodies = [chat_request(self.model, p.image(), text, self.max_new_tokens) for p, text in zip(problems, prompts)]
        return list(self._pool.map(self._complete, bodies))

    def _session(self):
        import requests

        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _count(self, **inc: float) -> None:
        with self._lock:
            for k, v in inc.items():
                self.counters[k] += v

    def _complete(self, body: dict) -> Generation:
        """POST with retries; exponential backoff with jitter (or the server's Retry-After)."""
        import requests

        for attempt in range(self.max_retries + 1):
            self._count(api_requests=1, api_retries=int(attempt > 0))
            wait, why = None, ""
            try:
                resp = self._session().post(self.url, json=body, headers=self._headers, timeout=self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                why = type(exc).__name__
            else:
                if resp.status_code == 200:
                    return self._generation(resp)
                why = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
                if resp.status_code not in RETRY_STATUS:
                    raise APIError(f"API request to {self.url} failed ({why})")
                wait = _retry_after(resp.headers.get("Retry-After"))
            if attempt == self.max_retries:
                raise APIError(f"API request to {self.url} failed after {self.max_retries} retries ({why})")
            if wait is None:
                wait = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** attempt) * random.uniform(0.5, 1.0)
            time.sleep(min(wait, BACKOFF_CAP_S))
        raise AssertionError("unreachable")

    def _generation(self, resp) -> Generation:
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise APIError(f"API at {self.url} answered without a chat completion: {resp.text[:200]!r}") from None
        usage = data.get("usage") or {}
        n_out = int(usage.get("completion_tokens") or 0)
        self._count(api_prompt_tokens=int(usage.get("prompt_tokens") or 0), api_completion_tokens=n_out)
        return Generation(raw_output=self.clean(text), finish_reason=choice.get("finish_reason") or "stop",
                          n_output_tokens=n_out)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: use our own backoff
        return None

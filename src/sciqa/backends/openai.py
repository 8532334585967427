"""Any OpenAI-compatible chat-completions API, greedy; the key is read from the environment only, never logged."""
import base64
import io
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import mlflow
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from sciqa import models
from sciqa.backends import Backend, Generation
from sciqa.config import KEY_VARIABLES
from sciqa.data import Problem
from sciqa.errors import SciqaError

RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529)
COUNTERS = ("api_requests", "api_retries", "api_prompt_tokens", "api_completion_tokens")


def chat_messages(image, prompt: str) -> list[dict]:
    """One user turn, the image as a PNG data URL first, then the text (the study's protocol)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": prompt}]}]


def chat_request(model: str, image, prompt: str, max_new_tokens: int) -> dict:
    return {"model": model, "messages": chat_messages(image, prompt), "temperature": 0, "max_tokens": max_new_tokens,
            "n": 1, "stream": False}


def output_cleaner(model: str, revision: str | None = None):
    """The family's ``clean_output`` for a tiny model or a local folder, else one cutting every family's markers."""
    if model in models.TINY_MODELS or Path(model).expanduser().is_dir():
        return models.resolve(model, revision)[1].clean_output
    markers = [m for name in models.FAMILIES for f in [models.family(name)] for m in (f.end_of_turn, *f.turn_markers)]
    return replace(models.family("causal_lm"), turn_markers=tuple(dict.fromkeys(markers))).clean_output


class OpenAIBackend(Backend):
    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        if not cfg.api_base:
            raise SciqaError("backend 'openai' needs --api-base URL of an OpenAI-compatible API "
                             "(e.g. http://127.0.0.1:8000/v1)")
        if not cfg.api_base.startswith(("http://", "https://")):
            raise SciqaError(f"--api-base must be an http(s) URL, got '{cfg.api_base}'")
        if cfg.api_key_env and not os.environ.get(cfg.api_key_env):
            raise SciqaError(f"API key missing: set the environment variable {cfg.api_key_env} "
                             "(or name another one with --api-key-env; --api-key-env '' sends no key)")

    def __init__(self, cfg, adapter: None = None):  # no adapter: check_adapter refuses them for an API
        KEY_VARIABLES.add(cfg.api_key_env)  # redacted too, whatever its name
        key = os.environ.get(cfg.api_key_env, "")  # api_key_env "": no key
        self.model, self.url = cfg.model, cfg.api_base.rstrip("/") + "/chat/completions"
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self.max_new_tokens, self.timeout = cfg.max_new_tokens, cfg.timeout
        self.retry = Retry(total=cfg.max_retries, backoff_factor=1.0, backoff_max=60.0, backoff_jitter=1.0,
                           status_forcelist=RETRY_STATUS, allowed_methods=None, raise_on_status=False)
        self.prices = (cfg.prompt_cost_per_1k, cfg.completion_cost_per_1k)
        self.clean = output_cleaner(cfg.model, cfg.revision or None)
        run = mlflow.active_run()  # a resumed run's totals add up
        logged = mlflow.get_run(run.info.run_id).data.metrics if run else {}
        self.counters = {name: float(logged.get(name, 0.0)) for name in COUNTERS}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=cfg.concurrency, thread_name_prefix="sciqa-api")
        self._session = requests.Session()  # shared by the workers (a pool as large), retrying through urllib3
        self._session.mount(self.url, HTTPAdapter(max_retries=self.retry, pool_maxsize=cfg.concurrency))

    def metrics(self) -> dict[str, float]:
        (prompt, completion), n = self.prices, self.counters
        cost = (n["api_prompt_tokens"] * prompt + n["api_completion_tokens"] * completion) / 1000
        return {**n, "api_cost": cost} if prompt or completion else dict(n)

    def generate(self, problems: list[Problem], prompts: list[str]) -> list[Generation]:
        bodies = [chat_request(self.model, p.image(), text, self.max_new_tokens) for p, text in zip(problems, prompts)]
        return list(self._pool.map(self._complete, bodies))

    def _count(self, **inc: float) -> None:
        with self._lock:
            for k, v in inc.items():
                self.counters[k] += v

    def _complete(self, body: dict) -> Generation:
        try:
            resp = self._session.post(self.url, json=body, headers=self._headers, timeout=self.timeout)
        except requests.RequestException as exc:
            self._count(api_requests=1 + self.retry.total, api_retries=self.retry.total)
            raise SciqaError(f"API request to {self.url} failed after {self.retry.total} retries "
                           f"({type(exc).__name__})") from None
        retries = len(resp.raw.retries.history) if resp.raw.retries else 0
        self._count(api_requests=1 + retries, api_retries=retries)
        if resp.status_code != 200:
            why = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
            raise SciqaError(f"API request to {self.url} failed after {retries} retries ({why})")
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise SciqaError(f"API at {self.url} answered without a chat completion: {resp.text[:200]!r}") from None
        usage = data.get("usage") or {}
        n_out = int(usage.get("completion_tokens") or 0)
        self._count(api_prompt_tokens=int(usage.get("prompt_tokens") or 0), api_completion_tokens=n_out)
        return Generation(raw_output=self.clean(text), finish_reason=choice.get("finish_reason") or "stop",
                          n_output_tokens=n_out)

"""The openai backend against a real OpenAI-compatible server on 127.0.0.1: ``transformers serve``
running the tiny LLaVA (transformers' server needs torchvision for Qwen2-VL's video processor,
which cannot be installed beside our torch), behind a small counting proxy that can also answer
429/500/503 for a deterministic subset of requests (the fault mode)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from helpers import free_port, run_cli

KEY = "sk-test-0123456789-never-log-me"
KEY_ENV = "SCIQA_TEST_API_KEY"


class Proxy:
    """Forwards chat completions to the real server; counts requests per prompt text."""

    def __init__(self, upstream: str, model_path: str):
        self.upstream, self.model_path = upstream, model_path
        self.lock = threading.Lock()
        self.inflight = 0
        self.reset()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - the name http.server dispatches to
                with proxy.lock:
                    proxy.inflight += 1
                try:
                    self.answer()
                finally:
                    with proxy.lock:
                        proxy.inflight -= 1

            def answer(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][0]["content"][-1]["text"]
                status = proxy.record(prompt, self.headers.get("Authorization", ""))
                if status != 200:
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "injected fault"}}')
                    return
                time.sleep(proxy.delay)
                resp = requests.post(proxy.upstream + "/v1/chat/completions", timeout=120,
                                     json={**body, "model": proxy.model_path})
                if resp.status_code == 200:
                    with proxy.lock:
                        proxy.served[prompt] += 1
                self.send_response(resp.status_code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(resp.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self, fault: bool = False, delay: float = 0.0) -> None:
        """New counters, once the requests of an earlier (killed) client have been answered."""
        deadline = time.time() + 60
        while self.inflight and time.time() < deadline:
            time.sleep(0.05)
        self.fault, self.delay = fault, delay
        self.received, self.served, self.auth = Counter(), Counter(), set()

    def record(self, prompt: str, auth: str) -> int:
        """The status to answer: in fault mode, the first one or two tries of about 2 in 3 prompts fail."""
        with self.lock:
            self.received[prompt] += 1
            self.auth.add(auth)
            tries = self.received[prompt]
        if not self.fault:
            return 200
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        plan = {0: [429], 1: [500, 503], 2: []}[h % 3]
        return plan[tries - 1] if tries <= len(plan) else 200


@pytest.fixture(scope="session")
def api(tmp_path_factory, sciqa_test_cache):
    """``transformers serve`` on the tiny LLaVA plus the proxy (session scope: it starts while the
    MLflow server does; only this file uses it)."""
    env = {**os.environ, "SCIQA_CACHE": str(sciqa_test_cache), "HF_HUB_OFFLINE": "1"}
    code = "from sciqa import models; print(models.resolve('tiny-llava')[0])"
    model_path = subprocess.run([sys.executable, "-c", code],
                                env=env, capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "transformers.cli.transformers", "serve", model_path,
                                 "--host", "127.0.0.1", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    upstream = f"http://127.0.0.1:{port}"

    def wait_ready() -> None:  # called by the tests, so the server starts while MLflow's does
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(upstream + "/health", timeout=1).ok:
                    return
            except requests.RequestException:
                time.sleep(0.3)
        raise RuntimeError("transformers serve did not start: " + log_path.read_text()[-3000:])

    proxy = Proxy(upstream, model_path)
    proxy.wait_ready = wait_ready
    yield proxy
    proxy.server.shutdown()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def bench_args(api: Proxy, workdir: Path, limit: int = 6, *extra: str) -> list[str]:
    api.wait_ready()
    return ["benchmark", "--backend", "openai", "--model", "tiny-llava", "--api-base", api.url,
            "--api-key-env", KEY_ENV, "--limit", str(limit), "--max-new-tokens", "8", "--batch-size", "3",
            "--concurrency", "3", "--workdir", str(workdir), *extra]


def outputs(workdir: Path):
    import pandas as pd

    (path,) = workdir.glob("*/*.csv")
    return pd.read_csv(path, dtype={"id": str}, keep_default_na=False)


def run_id_of(stdout: str) -> str:
    return stdout.strip().splitlines()[-1].split()[-1]


@pytest.mark.slow  # the transformers serve process
def test_benchmark_rows_tokens_and_key_never_logged(api, experiment, tmp_path):
    import mlflow

    api.reset()
    prices = ("--prompt-cost-per-1k", "0.5", "--completion-cost-per-1k", "1.5")
    proc = run_cli(*bench_args(api, tmp_path / "w", 6, *prices), cwd=tmp_path, env={KEY_ENV: KEY})
    df = outputs(tmp_path / "w")
    assert len(df) == 6 and df["id"].is_unique
    assert set(df["finish_reason"]) <= {"stop", "length"} and (df["n_output_tokens"] > 0).all()
    assert api.served == Counter(df["prompt"])  # one request per id, no more
    assert api.auth == {f"Bearer {KEY}"}
    run = mlflow.get_run(run_id_of(proc.stdout))
    m = run.data.metrics
    assert m["api_requests"] == 6 and m["api_retries"] == 0 and m["rows"] == 6
    assert m["api_prompt_tokens"] > 0 and m["api_completion_tokens"] == df["n_output_tokens"].sum()
    assert m["api_cost"] == pytest.approx((m["api_prompt_tokens"] * 0.5 + m["api_completion_tokens"] * 1.5) / 1000)
    assert run.data.params["backend"] == "openai" and run.data.params["api_base"] == api.url
    # the key is nowhere: params, tags, artifacts, console
    blobs = [json.dumps(run.data.params), json.dumps(run.data.tags), proc.stdout, proc.stderr]
    art = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / "art")))
    blobs += [p.read_text(errors="replace") for p in art.rglob("*") if p.is_file()]
    assert blobs[4:] and not any(KEY in b for b in blobs)


@pytest.mark.slow  # the transformers serve process
def test_faults_are_retried_and_every_id_written_once(api, experiment, tmp_path):
    import mlflow

    api.reset(fault=True)
    proc = run_cli(*bench_args(api, tmp_path / "w", 6), cwd=tmp_path, env={KEY_ENV: KEY})
    df = outputs(tmp_path / "w")
    assert len(df) == 6 and df["id"].is_unique
    assert api.served == Counter(df["prompt"])
    faults = sum(api.received.values()) - sum(api.served.values())
    assert faults > 0, "the fault mode injected nothing: pick other problems"
    m = mlflow.get_run(run_id_of(proc.stdout)).data.metrics
    assert m["api_retries"] == faults and m["api_requests"] == 6 + faults


@pytest.mark.slow  # the transformers serve process
def test_interrupted_run_resumes_without_paying_twice(api, experiment, tmp_path):
    import mlflow

    api.reset(delay=0.4)
    workdir = tmp_path / "w"
    args = bench_args(api, workdir, 9)
    proc = subprocess.Popen([sys.executable, "-m", "sciqa", *args], cwd=tmp_path, env={**os.environ, KEY_ENV: KEY},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if list(workdir.glob("*/*.csv")) and len(outputs(workdir)) >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = outputs(workdir)
    assert 3 <= len(first) < 9, "the run was not interrupted midway"
    paid_before = Counter(api.served)

    api.reset()
    done = run_cli(*args, cwd=tmp_path, env={KEY_ENV: KEY})
    df = outputs(workdir)
    assert len(df) == 9 and df["id"].is_unique and set(first["id"]) <= set(df["id"])
    assert not set(api.received) & set(first["prompt"]), "a finished id was requested again"
    assert api.served == Counter(df["prompt"][~df["id"].isin(first["id"])])
    assert sum(paid_before.values()) + sum(api.served.values()) <= 9 + 3  # at most the killed batch again
    run = mlflow.get_run(run_id_of(done.stdout))
    assert run.data.metrics["rows"] == 9 and run.info.status == "FINISHED"


def test_config_errors_are_one_line(cli, tmp_path, experiment, monkeypatch):
    from sciqa.backends.openai import OpenAIBackend
    from sciqa.errors import SciqaError
    from sciqa.steps.benchmark import BenchmarkConfig

    with pytest.raises(SciqaError, match="--api-base"):
        OpenAIBackend.check(BenchmarkConfig(backend="openai"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(SciqaError, match="OPENAI_API_KEY"):
        OpenAIBackend.check(BenchmarkConfig(backend="openai", api_base="http://127.0.0.1:9/v1"))
    OpenAIBackend.check(BenchmarkConfig(backend="openai", api_base="http://127.0.0.1:9/v1", api_key_env=""))
    proc = cli("benchmark", "--backend", "openai", "--api-base", "http://127.0.0.1:9/v1", "--limit", "2",
               "--workdir", str(tmp_path / "w"), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("sciqa: error: API key missing: set the environment variable OPENAI_API_KEY")


def test_request_body_and_output_cleaning():
    from PIL import Image

    from sciqa.backends.openai import chat_request, output_cleaner

    body = chat_request("m", Image.new("RGB", (8, 8)), "Question: x", 16)
    content = body["messages"][0]["content"]
    assert [c["type"] for c in content] == ["image_url", "text"]  # image first, as the study's protocol
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["temperature"] == 0 and body["max_tokens"] == 16
    clean = output_cleaner("gemini-1.5-flash")  # a remote name: every family's turn markers
    assert clean('{"answer": "A"}[INST] more') == '{"answer": "A"}'
    assert clean('ok<|im_end|>\n<|im_start|>user') == "ok"

"""Load test: many concurrent `sciqa benchmark` processes on one tracking store.

N tiny benchmarks (different settings and limits, so N different runs) start at the same moment
against (a) a fresh sqlite store (no db file yet: the first-use migration race) and (b) a local
`sciqa server`; then two identical commands start at once on a fresh sqlite store (the second must
wait and reuse the first one's run). Every process must exit 0, every run be FINISHED, every
outputs CSV (logged artifact and local copy under --workdir) hold each id once, and the logged
`rows` metric match the CSV. Prints one row per store: processes, runs, rows, wall time, errors.

    python benchmarks/load_test.py [--n 8] [--limit 3] [--stores sqlite,server,identical]

Tiny models come from the usual cache (SCIQA_CACHE or ~/.cache/sciqa), built once before the clock
starts. tests/test_store.py runs the same functions with fewer processes.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SETTINGS = ("QTCH", "QTCHL", "QTCHLS", "QTCHS")
SPLIT = "validation"
EXPERIMENT = "load-test"
READY = "export MLFLOW_TRACKING_URI="
METRICS = ("rows", "rows_generated", "rows_per_second", "seconds", "mapped_rate")


@dataclass(frozen=True)
class Job:
    setting: str
    limit: int

    def args(self, workdir: Path) -> list[str]:
        return ["benchmark", "--model", "tiny-qwen2-vl", "--limit", str(self.limit), "--max-new-tokens", "2",
                "--batch-size", "4", "--setting", self.setting, "--workdir", str(workdir)]


@dataclass
class Result:
    """What one store went through; ``errors`` is empty when everything held."""

    store: str
    processes: int = 0
    exited_ok: int = 0
    runs: int = 0
    finished: int = 0
    rows_expected: int = 0
    rows_metric: int = 0
    rows_csv: int = 0
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)


def jobs(n: int, limit: int) -> list[Job]:
    """N different benchmarks: the settings in turn, the limit growing every round."""
    return [Job(SETTINGS[i % len(SETTINGS)], limit + i // len(SETTINGS)) for i in range(n)]


def _env(uri: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    return env


def warm_cache() -> None:
    """Build the tiny model before the clock starts (concurrent first builds only waste CPU)."""
    code = "from sciqa.models.tiny import tiny_model_path; tiny_model_path('tiny-qwen2-vl')"
    subprocess.run([sys.executable, "-c", code], check=True)


def _error_line(stderr: str) -> str:
    """The last line that names an error (a traceback's last line), else the last line."""
    lines = [x.strip() for x in stderr.splitlines() if x.strip() and "%|" not in x]
    final = [x for x in lines if re.match(r"[\w.]*(Error|Exception)\b.*:", x)]  # `module.Class: message`
    named = [x for x in lines if "Error" in x or "error" in x or "Exception" in x]
    return (final or named or lines or ["(no output)"])[-1][:300]


def _start(args: list[str], log: Path, **kwargs) -> subprocess.Popen:
    """A ``python -m sciqa`` process writing ``log``.out/.err (files, not pipes: nobody reads them live)."""
    with open(log.with_suffix(".out"), "w") as out, open(log.with_suffix(".err"), "w") as err:
        return subprocess.Popen([sys.executable, "-m", "sciqa", *args], stdout=out, stderr=err, **kwargs)


def run_concurrently(todo: list[Job], uri: str, folder: Path) -> tuple[list[subprocess.CompletedProcess], float]:
    """Start every job at once (one shared --workdir, as on a cluster), wait for all; (results, wall s)."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    procs = [_start(job.args(folder / "work"), logs / str(i), cwd=folder, env=_env(uri)) for i, job in enumerate(todo)]
    for proc in procs:
        proc.wait()
    wall = time.perf_counter() - started
    return [subprocess.CompletedProcess(p.args, p.returncode, (logs / f"{i}.out").read_text(),
                                        (logs / f"{i}.err").read_text()) for i, p in enumerate(procs)], wall


def _csv_ids(path: Path) -> list[str]:
    import pandas as pd

    return pd.read_csv(path, dtype={"id": str})["id"].tolist()


def _check_run(run, workdir: Path, uri: str, tmp: Path) -> tuple[int, list[str]]:
    """One run: FINISHED, its metrics all there, each id once in the logged and the local CSV, and
    ``rows`` = ``rows_generated`` = CSV rows = limit. Returns (CSV rows, problems)."""
    import mlflow

    rid, metrics, problems = run.info.run_id, run.data.metrics, []
    name = f"{SPLIT}_{run.data.tags.get('sciqa.setting')}.csv"
    if run.info.status != "FINISHED":
        problems.append(f"run {rid} is {run.info.status}")
    if missing := [m for m in METRICS if m not in metrics]:
        problems.append(f"run {rid}: metrics {missing} missing")
    try:
        logged = Path(mlflow.artifacts.download_artifacts(run_id=rid, artifact_path=f"outputs/{name}",
                                                          dst_path=str(tmp / rid), tracking_uri=uri))
    except Exception:  # noqa: BLE001 - "not there" comes as several exception types
        return 0, [*problems, f"run {rid}: no logged outputs/{name}"]
    local = workdir / run.data.tags.get("sciqa.key", "?") / name
    ids = _csv_ids(logged)
    if len(ids) != len(set(ids)):
        problems.append(f"run {rid}: {len(ids) - len(set(ids))} duplicate id(s) in the logged CSV")
    if not local.exists() or sorted(_csv_ids(local)) != sorted(ids):
        problems.append(f"run {rid}: the local CSV {local} differs from the logged one")
    limit = int(run.data.params.get("limit", -1))
    if not metrics.get("rows") == metrics.get("rows_generated") == len(ids) == limit:
        problems.append(f"run {rid}: metrics rows={metrics.get('rows')}, rows_generated="
                        f"{metrics.get('rows_generated')}, CSV rows={len(ids)}, limit={limit}")
    return len(ids), problems


def verify(result: Result, todo: list[Job], uri: str, folder: Path) -> Result:
    """Fill ``result`` from the store: runs, states, rows (metric and CSV) against what was asked."""
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    result.runs, result.finished = len(runs), sum(r.info.status == "FINISHED" for r in runs)
    result.rows_expected = sum(j.limit for j in set(todo))
    result.rows_metric = int(sum(r.data.metrics.get("rows", 0) for r in runs))
    if len(runs) != len(set(todo)):
        result.errors.append(f"{len(runs)} runs for {len(set(todo))} different benchmarks")
        if len({r.data.tags.get("sciqa.code_version") for r in runs}) > 1:  # the step key includes the source
            result.errors.append("the runs carry different sciqa.code_version tags: sciqa's source changed "
                                 "during the test, so identical commands were not identical")
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            rows, problems = _check_run(run, folder / "work", uri, Path(tmp))
            result.rows_csv += rows
            result.errors += problems
    return result


def exercise(store: str, todo: list[Job], uri: str, folder: Path) -> Result:
    """Run ``todo`` at once against ``uri``, then check what the store holds."""
    done, wall = run_concurrently(todo, uri, folder)
    result = Result(store, processes=len(done), exited_ok=sum(p.returncode == 0 for p in done), wall_s=wall)
    result.errors += [f"process {i} exited {p.returncode}: {_error_line(p.stderr)}"
                      for i, p in enumerate(done) if p.returncode != 0]
    result.run_ids = [p.stdout.strip().split()[-1] for p in done if p.returncode == 0 and p.stdout.strip()]
    return verify(result, todo, uri, folder)


def fresh_sqlite(folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``sciqa server`` on a fresh folder, in the background; stopped as Ctrl-C would stop it."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.proc = _start(["server", "--port", str(free_port()), "--store", str(folder / "store")],
                           folder / "server", start_new_session=True)
        self.log, self.err = folder / "server.out", folder / "server.err"  # the export line; MLflow's log
        self.uri = self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in self.log.read_text().splitlines():
                if line.startswith(READY):
                    return line[len(READY):].strip()
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("sciqa server did not start: " + self.err.read_text()[-2000:])

    def stop(self) -> int:
        """Ctrl-C (SIGINT to its process group); the exit code of ``sciqa server``."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=60)


def sqlite_case(n: int, limit: int, root: Path) -> Result:
    folder = root / f"sqlite-{n}"
    return exercise(f"fresh sqlite, N={n}", jobs(n, limit), fresh_sqlite(folder), folder)


def server_case(n: int, limit: int, root: Path) -> Result:
    folder = root / f"server-{n}"
    server = Server(folder)
    try:
        result = exercise(f"sciqa server, N={n}", jobs(n, limit), server.uri, folder)
    finally:
        code = server.stop()
    if code != 0:
        result.errors.append(f"sciqa server exited {code} on Ctrl-C: {_error_line(server.err.read_text())}")
    return result


def identical_case(limit: int, root: Path) -> Result:
    """Two identical commands at once on a fresh store: one run, both processes end with its id."""
    folder = root / "identical"
    result = exercise("identical x2, fresh sqlite", [Job("QTCH", limit)] * 2, fresh_sqlite(folder), folder)
    if len(set(result.run_ids)) != 1:
        result.errors.append(f"the two processes ended with different runs: {result.run_ids}")
    return result


def table(results: list[Result]) -> str:
    head = ("store", "procs", "exit 0", "runs", "FINISHED", "rows asked/metric/CSV", "wall s", "errors")
    rows = [(r.store, r.processes, r.exited_ok, r.runs, r.finished, f"{r.rows_expected}/{r.rows_metric}/{r.rows_csv}",
             f"{r.wall_s:.1f}", len(r.errors)) for r in results]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = [" | ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in (head, *rows)]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    details = [f"  {r.store}: {e}" for r in results for e in r.errors]
    return "\n".join(lines + details)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=8, help="concurrent processes per store")
    parser.add_argument("--limit", type=int, default=3, help="problems of the smallest benchmark")
    parser.add_argument("--stores", default="sqlite,server,identical", help="which cases, comma-separated")
    parser.add_argument("--keep", default="", help="keep the stores and logs in this folder")
    args = parser.parse_args()
    warm_cache()
    cases = {"sqlite": lambda root: sqlite_case(args.n, args.limit, root),
             "server": lambda root: server_case(args.n, args.limit, root),
             "identical": lambda root: identical_case(args.limit, root)}
    with tempfile.TemporaryDirectory(prefix="sciqa-load-") as tmp:
        root = Path(args.keep or tmp)
        results = [cases[name.strip()](root) for name in args.stores.split(",") if name.strip()]
    print(table(results))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

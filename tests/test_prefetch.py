"""``sciqa prefetch``: local folder sources copied to --dest and loaded offline; hub ids go through
``snapshot_download`` / ``load_dataset`` (faked here: no hub is reachable); failures are one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_local_folders_copied_and_load_offline(cli, tmp_path):
    from sciqa import models
    from sciqa.data import SAMPLE_DIR, load_problems

    model_src = Path(models.resolve("tiny-qwen2-vl")[0])
    data_src = tmp_path / "scienceqa-orig"
    shutil.copytree(SAMPLE_DIR, data_src)
    dest = tmp_path / "dest"
    proc = cli("prefetch", "--model", str(model_src), "--dataset", str(data_src), "--dest", str(dest),
               cwd=tmp_path, env={"HF_HUB_OFFLINE": "1"})
    model_copy, data_copy = dest / "models" / model_src.name, dest / "datasets" / data_src.name
    assert f"--model {model_copy}" in proc.stdout and f"--dataset {data_copy}" in proc.stdout
    shutil.rmtree(data_src)  # the copies stand on their own
    lm = models.load(str(model_copy))  # HF_HUB_OFFLINE=1 in every test (conftest)
    assert lm.family.name == "qwen2_vl"
    assert len(load_problems(str(data_copy), "validation", limit=3)) == 3


def test_hub_ids(tmp_path, monkeypatch):
    """Models: snapshot_download's arguments. Datasets: what load_dataset returns is saved where
    sciqa reads it offline (load_dataset is faked with the sample's rows: no hub here)."""
    import datasets
    import huggingface_hub

    from sciqa import prefetch
    from sciqa.data import SAMPLE_DIR, load_problems

    calls = []

    def fake_snapshot_download(**kw):
        calls.append(kw)
        return kw.get("local_dir") or str(tmp_path / "cache" / kw["repo_id"])

    rows = [dict(r, image=None) for r in json.loads((SAMPLE_DIR / "problems.json").read_text()).values()
            if r["split"] == "val"]
    fake_hub = datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setattr(datasets, "load_dataset", lambda name, revision=None: fake_hub)
    m = prefetch.prefetch_model("Qwen/Qwen2-VL-2B-Instruct", None, "main")
    assert calls[0]["repo_type"] == "model" and calls[0]["revision"] == "main" and calls[0]["local_dir"] is None
    assert "*.safetensors" in calls[0]["allow_patterns"] and "*.jinja" in calls[0]["allow_patterns"]
    assert m.use_as == "Qwen/Qwen2-VL-2B-Instruct"  # from the cache: the same --model on the node
    m = prefetch.prefetch_model("mistralai/Pixtral-12B-2409", tmp_path / "dest")
    assert calls[1]["local_dir"] == m.use_as == str(tmp_path / "dest" / "models" / "mistralai--Pixtral-12B-2409")

    d = prefetch.prefetch_dataset("derek-thomas/ScienceQA", tmp_path / "dest")
    assert d.use_as == str(tmp_path / "dest" / "datasets" / "derek-thomas--ScienceQA")
    prefetch.verify_offline([d])  # a fresh process with HF_HUB_OFFLINE=1
    assert len(load_problems(d.use_as, "val", keep_all=True)) == len(rows)
    assert prefetch.prefetch_dataset("derek-thomas/ScienceQA").use_as == "derek-thomas/ScienceQA"


def test_errors_are_one_line(cli, tmp_path):
    proc = cli("prefetch", "--model", "nobody/no-such-model-xyz", "--no-verify", cwd=tmp_path, check=False,
               env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot download model 'nobody/no-such-model-xyz'" in proc.stderr
    proc = cli("prefetch", "--dataset", "nobody/no-such-dataset-xyz", cwd=tmp_path, check=False,
               env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "cannot download dataset 'nobody/no-such-dataset-xyz'" in proc.stderr
    proc = cli("prefetch", "--dataset", str(tmp_path), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "pass --dest" in proc.stderr


@pytest.mark.parametrize("name", ["tiny-qwen2-vl", "sample"])
def test_nothing_to_prefetch(name):
    from sciqa import prefetch
    from sciqa.errors import SciqaError

    with pytest.raises(SciqaError, match="nothing to prefetch"):
        (prefetch.prefetch_model if name.startswith("tiny") else prefetch.prefetch_dataset)(name)

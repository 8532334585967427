"""On a cluster without root: WordNet from nltk's own data, honest dependency lists, `sciqa doctor`,
an authenticated server (issue "On a real cluster"). In-process; the install itself is tests/test_install.py."""
from __future__ import annotations

import ast
import re
import shutil
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import nltk
import pytest

from sciqa import metrics
from sciqa.errors import SciqaError

PREDICTIONS = ["the dog ran quickly to the big house", "a hound sprinted home", "plants need light to grow", ""]
REFERENCES = ["the hound ran fast to the large home", "the dog ran quickly to the house",
              "a plant needs sunlight to grow", "anything"]


def _nltk_data(tmp_path, zipped: bool):
    """An nltk data folder holding WordNet as nltk's downloader leaves it (``corpora/wordnet.zip``) or
    unzipped (``corpora/wordnet/``), made from Debian's files: the same WordNet 3.0."""
    root = tmp_path / ("zipped" if zipped else "folder")
    folder = root / "corpora" / "wordnet"
    folder.mkdir(parents=True)
    metrics._copy_wordnet(folder)
    if zipped:
        with zipfile.ZipFile(root / "corpora" / "wordnet.zip", "w") as archive:
            archive.writestr("wordnet/", "")
            for path in sorted(folder.iterdir()):
                archive.write(path, f"wordnet/{path.name}")
        shutil.rmtree(folder)
    return root


def _meteor_with(monkeypatch, nltk_path: list[str]):
    monkeypatch.setattr(nltk.data, "path", nltk_path)
    metrics._meteor_helpers.cache_clear()
    try:
        return metrics.wordnet_source(), metrics._meteor(PREDICTIONS, REFERENCES)
    finally:
        metrics._meteor_helpers.cache_clear()


@pytest.mark.parametrize("zipped", [False, True], ids=["folder", "zip"])
def test_meteor_is_identical_with_nltk_data_and_debian_files(tmp_path, monkeypatch, zipped):
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    debian_source, debian = _meteor_with(monkeypatch, [])
    assert debian_source == ("debian", metrics._DEBIAN_WORDNET)

    data = _nltk_data(tmp_path, zipped)
    monkeypatch.setattr(metrics, "_DEBIAN_WORDNET", tmp_path / "no-debian")  # nltk's data alone suffice
    shutil.rmtree(tmp_path / "cache")
    nltk_source, from_nltk = _meteor_with(monkeypatch, [str(data)])
    expected = data / "corpora" / ("wordnet.zip" if zipped else "wordnet")
    assert nltk_source == ("nltk data", expected)
    assert not (tmp_path / "cache").exists()  # nothing copied: nltk reads its own data
    assert from_nltk[:3] == debian[:3]
    assert from_nltk[3] != from_nltk[3]  # empty prediction: NaN either way

    from nltk.translate.meteor_score import meteor_score

    class NoWordNet:
        synsets = staticmethod(lambda word: [])

    plain = meteor_score([REFERENCES[0].split()], PREDICTIONS[0].split(), wordnet=NoWordNet())
    assert from_nltk[0] > plain  # the synonyms (hound/dog, fast/quickly, large/big) came from WordNet


def test_nltk_data_come_before_debian_files(tmp_path, monkeypatch):
    data = _nltk_data(tmp_path, zipped=False)
    monkeypatch.setattr(nltk.data, "path", [str(data)])
    assert metrics.wordnet_source() == ("nltk data", data / "corpora" / "wordnet")
    assert metrics.ensure_wordnet() == data / "corpora" / "wordnet"


def test_no_wordnet_anywhere_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("SCIQA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path / "empty")])
    monkeypatch.setattr(metrics, "_DEBIAN_WORDNET", tmp_path / "no-debian")
    assert metrics.wordnet_source() is None
    for check in (metrics.ensure_wordnet, metrics.check_prerequisites):
        with pytest.raises(SciqaError) as error:
            check()
        message = str(error.value)
        assert "\n" not in message
        assert "nltk.downloader -d ~/nltk_data wordnet" in message and "apt-get install wordnet-base" in message


# --------------------------------------------------------------------------- dependencies

ROOT = Path(__file__).resolve().parents[1]
# Declared though src/ never imports them: a library it calls needs them.
NEEDED_WITHOUT_IMPORT = {"tabulate": "pandas' DataFrame.to_markdown", "onnx": "torch.onnx.export (metrics' ONNX encoder)"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict[str, str]:
    """Distribution -> where pyproject declares it ("" = the dependencies, else the extra's name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"": project["dependencies"], **project["optional-dependencies"]}
    return {_canonical(re.match(r"[A-Za-z0-9._-]+", spec).group()): group
            for group, specs in groups.items() for spec in specs}


def _imported() -> dict[str, str]:
    """Third-party top-level module -> a file of src/ importing it (every import, lazy ones too)."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "src").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for top in {name.split(".")[0] for name in names} - set(sys.stdlib_module_names) - {"sciqa"}:
                found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_pyproject_declares_what_src_imports_and_nothing_else():
    declared, providers = _declared(), packages_distributions()
    used = set()
    for module, where in _imported().items():
        candidates = {_canonical(d) for d in providers.get(module, [module])}  # not installed (vllm): its own name
        hits = candidates & declared.keys()
        assert hits, f"{where} imports {module} ({', '.join(sorted(candidates))}): not declared in pyproject.toml"
        used |= hits
    unused = {name for name, group in declared.items() if group == ""} - used - set(NEEDED_WITHOUT_IMPORT)
    assert not unused, f"declared but never imported by src/: {sorted(unused)}"
    for name in NEEDED_WITHOUT_IMPORT:
        assert declared.get(name) == "" and name not in used, name  # a stale entry here fails too

"""WordNet for METEOR, never downloaded: nltk's own data, else Debian's files laid out as nltk reads them."""
import shutil
from contextlib import suppress
from pathlib import Path

import nltk
from nltk.corpus.reader import CorpusReader, WordNetCorpusReader
from nltk.corpus.util import LazyCorpusLoader

from sciqa.errors import SciqaError
from sciqa.files import build_folder, cache_root

_DEBIAN_WORDNET = Path("/usr/share/wordnet")
_CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
_WORDNET_FILES = (*(f"{kind}.{pos}" for kind in ("index", "data") for pos in _CATEGORY),
                  *(f"{pos}.exc" for pos in _CATEGORY), "cntlist.rev", "index.sense")
# WordNet 3.0's 45 lexicographer files in file-number order (lexnames(5WN)): Debian ships only the man page.
_LEXNAMES = ["adj.all", "adj.pert", "adv.all", *(f"noun.{name}" for name in [
    "Tops", "act", "animal", "artifact", "attribute", "body", "cognition", "communication", "event", "feeling", "food",
    "group", "location", "motive", "object", "person", "phenomenon", "plant", "possession", "process", "quantity",
    "relation", "shape", "state", "substance", "time"]), *(f"verb.{name}" for name in [
    "body", "change", "cognition", "communication", "competition", "consumption", "contact", "creation", "emotion",
    "motion", "perception", "possession", "social", "stative", "weather"]), "adj.ppl"]
NO_WORDNET = ("WordNet not found (METEOR needs it): put nltk's in ~/nltk_data or $NLTK_DATA "
              "(`python -m nltk.downloader -d ~/nltk_data wordnet` where there is internet), or install Debian's "
              f"into {_DEBIAN_WORDNET} (`apt-get install wordnet-base wordnet-sense-index`, or .ci/setup.sh)")
_OWN_NLTK_ROOTS: set[str] = set()  # sciqa's copies put on nltk.data.path: not "nltk's own data"


def _copy_folder() -> Path:  # sciqa's copy of Debian's files, in an nltk data root of its own
    return cache_root() / "nltk_data" / "corpora" / "wordnet"


def _find_wordnet(paths: list[str] | None = None):
    """nltk's pointer to WordNet, looked up as ``nltk.corpus`` does (the folder, then inside the zip)."""
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        with suppress(LookupError):
            return nltk.data.find(name, paths=paths)
    return None


def wordnet_source() -> tuple[str, Path] | None:
    """Which WordNet METEOR reads: nltk's own (folder or zip, not sciqa's copy), Debian's, sciqa's copy; or None."""
    own = _OWN_NLTK_ROOTS | {str(_copy_folder().parents[1])}
    if (found := _find_wordnet([p for p in nltk.data.path if p not in own])) is not None:
        return "nltk data", Path(found.zipfile.filename if hasattr(found, "zipfile") else found)
    if all((_DEBIAN_WORDNET / name).is_file() for name in _WORDNET_FILES):
        return "debian", _DEBIAN_WORDNET
    copy = _copy_folder()
    return ("debian (cached copy)", copy) if (copy / "lexnames").is_file() else None


def ensure_wordnet() -> Path:
    """nltk's own WordNet, else a private copy of Debian's (NLTK 3.10's pathsec refuses links) on ``nltk.data.path``."""
    source = wordnet_source()
    if source is None:
        raise SciqaError(NO_WORDNET)
    if source[0] == "nltk data":
        return source[1]
    target = _copy_folder()
    root = target.parents[1]
    if not (target / "lexnames").is_file():
        for folder in (root, target.parent):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)  # pathsec refuses folders others can write
        build_folder(target, _copy_wordnet, "lexnames")
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
        _OWN_NLTK_ROOTS.add(str(root))
    return target


def wordnet_reader() -> WordNetCorpusReader:
    """A fresh reader over :func:`ensure_wordnet`'s source, made as ``nltk.corpus.wordnet`` is (OMW stays lazy)."""
    ensure_wordnet()
    omw = LazyCorpusLoader("omw-1.4", CorpusReader, r".*/wn-data-.*\.tab", encoding="utf8")
    return WordNetCorpusReader(_find_wordnet(), omw)


def _copy_wordnet(staging: Path) -> None:
    """Debian's files plus the ``lexnames`` nltk needs, readable by all, writable by the owner only."""
    for name in _WORDNET_FILES:
        shutil.copyfile(_DEBIAN_WORDNET / name, staging / name)
    lines = [f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)]
    (staging / "lexnames").write_text("".join(lines), encoding="utf-8")
    for path in staging.iterdir():
        path.chmod(0o644)
    staging.chmod(0o755)

"""WordNet for METEOR, never downloaded: nltk's own data, else Debian's files laid out as nltk reads them."""
import shutil
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
_LEXNAMES = [
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl"]
NO_WORDNET = ("WordNet not found (METEOR needs it): put nltk's in ~/nltk_data or $NLTK_DATA "
              "(`python -m nltk.downloader -d ~/nltk_data wordnet` where there is internet), or install Debian's "
              f"into {_DEBIAN_WORDNET} (`apt-get install wordnet-base wordnet-sense-index`, or .ci/setup.sh)")
_OWN_NLTK_ROOTS: set[str] = set()  # sciqa's copies put on nltk.data.path: not "nltk's own data"


def _wordnet_root() -> Path:
    return cache_root() / "nltk_data"


def _find_wordnet(paths: list[str] | None = None):
    """nltk's pointer to WordNet, looked up as ``nltk.corpus`` does (the folder, then inside the zip)."""
    for name in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            return nltk.data.find(name, paths=paths)
        except LookupError:
            continue
    return None


def _nltk_wordnet() -> Path | None:
    """nltk's own WordNet (folder or the downloader's zip) where nltk looks; sciqa's copy is not one."""
    own = _OWN_NLTK_ROOTS | {str(_wordnet_root())}
    found = _find_wordnet([p for p in nltk.data.path if p not in own])
    if found is None:
        return None
    zipped = getattr(found, "zipfile", None)
    return Path(zipped.filename if zipped is not None else found.path)


def _debian_complete() -> bool:
    return all((_DEBIAN_WORDNET / name).is_file() for name in _WORDNET_FILES)


def wordnet_source() -> tuple[str, Path] | None:
    """Which WordNet METEOR reads: nltk's data, Debian's files, sciqa's earlier copy of them; None if none."""
    found = _nltk_wordnet()
    if found is not None:
        return "nltk data", found
    if _debian_complete():
        return "debian", _DEBIAN_WORDNET
    copy = _wordnet_root() / "corpora" / "wordnet"
    return ("debian (cached copy)", copy) if (copy / "lexnames").is_file() else None


def ensure_wordnet() -> Path:
    """nltk's own WordNet, else a private copy of Debian's (NLTK 3.10's pathsec refuses links) on ``nltk.data.path``."""
    found = _nltk_wordnet()
    if found is not None:
        return found
    root = _wordnet_root()
    target = root / "corpora" / "wordnet"
    if not (target / "lexnames").is_file():
        if not _debian_complete():
            raise SciqaError(NO_WORDNET)
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

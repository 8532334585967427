#!/usr/bin/env bash
# WordNet for METEOR from wherever this machine has it, as sciqa.eval.wordnet.wordnet_source() finds it: nltk's
# own data (~/nltk_data, $NLTK_DATA), then Debian's files in /usr/share/wordnet. With neither, Debian's
# packages wordnet-base + wordnet-sense-index through apt, as root or with sudo; a user who can be
# neither gets one line naming both ways. nltk never downloads at run time. Idempotent.
# PYTHON: the interpreter sciqa is installed in (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/lib.sh
python=${PYTHON:-python3}
source_of() {
    "$python" -c 'from sciqa.eval.wordnet import wordnet_source
found = wordnet_source()
print(f"{found[0]} ({found[1]})" if found else "")'
}
found=$(source_of)
if [[ -n $found ]]; then
    echo "wordnet: $found; skipping apt"
    exit 0
fi
if ! sciqa_root_prefix >/dev/null; then
    echo "wordnet: error: no WordNet, and apt needs root or sudo: put nltk's in ~/nltk_data (python -m nltk.downloader -d ~/nltk_data wordnet, where there is internet) or have wordnet-base wordnet-sense-index installed" >&2
    exit 1
fi
sciqa_apt wordnet-base wordnet-sense-index
found=$(source_of)
[[ -n $found ]] || { echo "wordnet: error: apt installed wordnet-base wordnet-sense-index, yet /usr/share/wordnet lacks files" >&2; exit 1; }
echo "wordnet: installed wordnet-base wordnet-sense-index: $found"

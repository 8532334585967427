#!/usr/bin/env bash
# Install Debian's WordNet 3.0 files that sciqa.metrics.ensure_wordnet() lays out
# for nltk (METEOR needs WordNet; nltk must never download it). Idempotent.
set -euo pipefail
dir=/usr/share/wordnet
files=(data.noun index.noun noun.exc data.verb index.verb verb.exc
       data.adj index.adj adj.exc data.adv index.adv adv.exc cntlist.rev index.sense)
missing=0
for f in "${files[@]}"; do [[ -f "$dir/$f" ]] || missing=1; done
if [[ $missing == 0 ]]; then
    echo "wordnet: files present in $dir"
    exit 0
fi
sudo=""
[[ $(id -u) == 0 ]] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
packages=(wordnet-base wordnet-sense-index)
if ! $sudo apt-get install -y --no-install-recommends "${packages[@]}"; then
    $sudo apt-get update
    $sudo apt-get install -y --no-install-recommends "${packages[@]}"
fi
for f in "${files[@]}"; do
    [[ -f "$dir/$f" ]] || { echo "wordnet: $dir/$f still missing after install" >&2; exit 1; }
done
echo "wordnet: installed ${packages[*]}"

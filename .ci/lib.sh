# Sourced by .ci/setup.sh, .ci/wordnet.sh and .ci/activate (POSIX sh, so any shell can source it).
# Two questions they share: may this user run apt (as root, or through sudo), and may pip install
# into this interpreter (PEP 668)?

# "" when root, "sudo" when sudo can ask (no password needed, or a terminal to type it); fails otherwise.
sciqa_root_prefix() {
    if [ "$(id -u)" = 0 ]; then
        echo ""
    elif command -v sudo >/dev/null 2>&1 && { sudo -n true 2>/dev/null || [ -t 0 ]; }; then
        echo sudo
    else
        return 1
    fi
}

# Install Debian packages as root; fails when this user cannot be root.
sciqa_apt() {
    _sciqa_sudo=$(sciqa_root_prefix) || return 1
    DEBIAN_FRONTEND=noninteractive $_sciqa_sudo apt-get install -y --no-install-recommends "$@" \
        || { $_sciqa_sudo apt-get update && DEBIAN_FRONTEND=noninteractive $_sciqa_sudo apt-get install -y --no-install-recommends "$@"; }
}

# True when interpreter $1 is externally managed (PEP 668: an EXTERNALLY-MANAGED file beside its standard
# library) and not a virtual environment: pip refuses it, so sciqa goes into the checkout's .venv instead.
sciqa_needs_venv() {
    "$1" -c 'import os, sys, sysconfig
managed = os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)'
}

"""Fixtures for tests/slurm: the throw-away Slurm cluster of slurm/testcluster/.

``slurm_cluster`` starts it once per session (about 8 s with apt on a fresh machine,
0.1 s once installed) and stops it at the end; ``SCIQA_SLURM_KEEP=1`` leaves it running.
It skips only when Slurm cannot start here (not root, packages not installable);
any other start failure fails the tests with the script's log.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "slurm" / "testcluster"
STATE_DIR = os.environ.get("SLURM_TEST_DIR", "/tmp/sciqa-slurm")  # short: unix socket paths


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running test cluster, also exported in os.environ for sbatch/squeue."""
    if os.geteuid() != 0:
        pytest.skip("Slurm test cluster: slurm/testcluster/start.sh needs root")
    env = dict(os.environ, SLURM_TEST_DIR=STATE_DIR)
    res = subprocess.run(["bash", str(SCRIPTS / "start.sh")], env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        tail = " | ".join(res.stderr.strip().splitlines()[-5:])
        if not all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
            pytest.skip(f"Slurm test cluster: packages could not be installed: {tail}")
        pytest.fail(f"slurm/testcluster/start.sh failed (exit {res.returncode}): {tail}")
    conf = res.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if os.environ.get("SCIQA_SLURM_KEEP") != "1":
        subprocess.run(["bash", str(SCRIPTS / "stop.sh")], env=env, timeout=120,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old

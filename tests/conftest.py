import os
import shutil
import subprocess

import pytest


def slurm_is_up() -> bool:
    """True when the one-host cluster of slurm/up answers (make test starts it)."""
    if not shutil.which("sinfo") or not os.environ.get("SLURM_CONF"):
        return False
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return out.returncode == 0 and "idle" in out.stdout


def pytest_collection_modifyitems(config, items):
    if slurm_is_up():
        return
    skip = pytest.mark.skip(reason="one-host Slurm is not up (run slurm/up, or make test)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)

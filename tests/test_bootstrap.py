import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bootstrap_is_idempotent_and_fast_the_second_time():
    for _ in range(2):
        start = time.monotonic()
        out = subprocess.run([str(ROOT / "scripts" / "bootstrap")], capture_output=True, text=True, timeout=900)
        elapsed = time.monotonic() - start
        assert out.returncode == 0, out.stderr
    # the second run installs nothing
    assert "installing" not in out.stdout, out.stdout
    assert out.stdout.strip().endswith("bootstrap: ready")
    assert elapsed < 30, f"second bootstrap took {elapsed:.1f} s"


def make_test(ci: str) -> subprocess.CompletedProcess:
    """`make test` with a one-host Slurm that does not start and pytest left out (both stood in by commands)."""
    stand_ins = ["SLURM_UP=false", "SLURM_DOWN=true", "PYTEST=true"]
    return subprocess.run(["make", "--no-print-directory", "-o", "bootstrap", "test", *stand_ins], cwd=ROOT,
                          env={**os.environ, "CI": ci}, capture_output=True, text=True, timeout=60)


def test_make_test_fails_on_ci_when_slurm_does_not_start_and_skips_its_tests_elsewhere():
    planned = subprocess.run(["make", "-n", "-o", "bootstrap", "test", "SLURM_UP=false", "PYTEST=true"], cwd=ROOT,
                             capture_output=True, text=True, timeout=60).stdout
    assert "slurm/up" not in planned and "pytest" not in planned, planned  # the stand-ins are what would run
    on_ci = make_test("true")
    assert on_ci.returncode != 0
    assert "one-host Slurm did not start, and on CI (CI=true) its tests must run" in on_ci.stderr
    elsewhere = make_test("")
    assert elsewhere.returncode == 0 and "Slurm tests will be skipped" in elsewhere.stdout


def test_without_slurm_the_summary_counts_the_skipped_slurm_tests_and_ci_fails_them():
    select = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_launch.py", "-k",
              "bad_partition or dry_run_prints_a_script"]
    env = {**os.environ, "SLURM_CONF": "", "PYTEST_ADDOPTS": ""}  # no cluster named
    out = subprocess.run([sys.executable, *select], cwd=ROOT, env={**env, "CI": ""}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0 and "2 skipped" in out.stdout, out.stdout[-2000:]
    assert "2 Slurm test(s) skipped: one-host Slurm is not up" in out.stdout
    out = subprocess.run([sys.executable, *select], cwd=ROOT, env={**env, "CI": "true"}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 1 and "2 errors" in out.stdout, out.stdout[-2000:]
    assert "on CI (CI=true) the Slurm tests must run" in out.stdout

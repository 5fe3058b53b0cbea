import subprocess
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

"""`pip install .` (not editable) into a fresh venv works, and the installed commands run from any directory.

The venv sees the system's site-packages (torch, h5py, ... come from there: no network), and this project is
built from a copy of the working tree with --no-deps --no-build-isolation. Everything then runs from a
temporary directory outside the repository, and each module must come from the venv, not from the checkout
(the checkout's editable install stays visible through the system site-packages, behind the venv's own).
One venv for the module (built in ~2 s: nothing is downloaded); about 15 s in all on 2 cores.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow

# copied into the build tree when there is no git to ask which files belong to the project
IGNORE = shutil.ignore_patterns(".git", ".slurm", ".pytest_cache", "__pycache__", "*.egg-info", "build", "demo",
                                "runs", ".whl", ".gl", ".venv", "*.tmp")


def _copy_source(dest: Path) -> None:
    """The project's files as a fresh clone plus the uncommitted ones would have them (symlinks kept)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        shutil.copytree(ROOT, dest, symlinks=True, ignore=IGNORE)
        return
    for rel in filter(None, listed):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            target.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, target)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HIS_SPEC", "PYTHONSAFEPATH")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """(python of a venv holding a plain install of this project, its site-packages, a work dir outside the repo)."""
    base = tmp_path_factory.mktemp("install")
    src, env_dir, work = base / "src", base / "venv", base / "work"
    _copy_source(src)
    work.mkdir()
    # --without-pip: the system's pip is importable through --system-site-packages and installs into the venv
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
                   check=True, timeout=120)
    python = env_dir / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                          "--ignore-installed", "--no-cache-dir", "--disable-pip-version-check", "--no-input", "-q",
                          str(src)],
                         cwd=work, env=_clean_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          env=_clean_env(), capture_output=True, text=True, check=True).stdout.strip()
    assert Path(site).resolve() != Path(sysconfig.get_paths()["purelib"]).resolve()
    return python, Path(site), work


def _run(venv, *args: str) -> subprocess.CompletedProcess:
    python, _, work = venv
    return subprocess.run([str(python), *args], cwd=work, env=_clean_env(), capture_output=True, text=True,
                          timeout=300)


def test_the_spec_ships_as_package_data(venv):
    _, site, _ = venv
    shipped = site / "his" / "data" / "datasets.h5.spec"
    assert shipped.is_file() and not shipped.is_symlink()
    assert shipped.read_bytes() == (ROOT / "his" / "data" / "datasets.h5.spec").read_bytes()
    # one copy in the repository: the root name is a link to the packaged file
    assert (ROOT / "datasets.h5.spec").resolve() == (ROOT / "his" / "data" / "datasets.h5.spec").resolve()


def test_modules_import_from_the_venv_not_the_checkout(venv):
    _, site, _ = venv
    out = _run(venv, "-c", "import his, his.train, his.eval, his.data.spec, hpc, hpc.launch, hpc.preprocess\n"
               "for m in (his, his.train, his.eval, his.data.spec, hpc, hpc.launch, hpc.preprocess):\n"
               "    print(m.__file__)\n"
               "print(his.data.spec.SPEC_PATH)\n")
    assert out.returncode == 0, out.stderr[-3000:]
    paths = [Path(line).resolve() for line in out.stdout.split()]
    assert len(paths) == 8
    for path in paths:
        assert path.is_relative_to(site.resolve()), f"{path} is not in the venv's {site}"
        assert not path.is_relative_to(ROOT), path


@pytest.mark.parametrize("module", ["his.data.spec", "hpc.launch", "hpc.preprocess", "his.train"])
def test_commands_answer_help_outside_the_repository(venv, module):
    out = _run(venv, "-m", module, "--help")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"python -m {module}" in out.stdout


def test_spec_check_runs_from_any_directory(venv):
    _, site, work = venv
    # a small image shard and its index, written and checked by the installed package only
    write = _run(venv, "-c",
                 "import numpy as np\n"
                 "from his.data.shards import build_index, write_shard\n"
                 "cols = {'image': np.zeros((2, 64, 64, 3), np.uint8),\n"
                 "        'source': np.array(['a.png', 'b.png'], object)}\n"
                 "write_shard('images-00000.h5', 'images', cols, {})\n"
                 "build_index('index.h5', ['images-00000.h5'], 'images')\n")
    assert write.returncode == 0, write.stderr[-3000:]
    check = _run(venv, "-m", "his.data.spec", "check", "index.h5", "images-00000.h5")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "2 of 2 file(s) conform" in check.stdout
    assert str(site.resolve()) in check.stdout  # the packaged spec, not the checkout's
    assert (work / "index.h5").is_file() and not (work / "datasets.h5.spec").exists()

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one intra-op thread: on 2 cores shared with other work, two spinning threads are several
    times slower than one. Use with pytestmark = pytest.mark.usefixtures("one_torch_thread")."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    if slurm_is_up():
        return
    skip = pytest.mark.skip(reason="one-host Slurm is not up (run slurm/up, or make test)")
    for item in items:
        if "slurm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_pipeline_data(tmp_path_factory):
    """A tiny generated data set run through the real front half of the pipeline: his.synth (3 classes x 4
    videos), hpc.preprocess (Ray), his.data.images, and pretrained-SoundNet features (hpc.features)."""
    import sys

    from his.synth import generate

    root = tmp_path_factory.mktemp("pipeline")
    classes = ["PlayingCello", "PlayingDhol", "PlayingSitar"]
    generate(root / "data", classes=classes, videos_per_class=4, groups=4, ppmi_images=16, seed=0,
             duration_range=(4.0, 5.0), progress=False)
    run = lambda *args: subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, timeout=300)
    run("hpc.preprocess", "--videos", str(root / "data" / "UCF-101"), "--splits", str(root / "data" / "ucfTrainTestlist"),
        "--classes", ",".join(classes), "--out", str(root / "clips"), "--num-cpus", "2")
    run("his.data.images", "--src", str(root / "data" / "PPMI"), "--out", str(root / "images"))
    run("hpc.features", f"data={root / 'clips'}", "actors=1", "figure=false")
    features = next((root / "clips" / "features").iterdir())
    return {"root": root, "clips": root / "clips", "images": root / "images", "features": features}

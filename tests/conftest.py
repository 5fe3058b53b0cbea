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


SLURM_DOWN = "one-host Slurm is not up (run slurm/up, or make test)"
REQUIRED_ON_CI = pytest.StashKey[bool]()


def pytest_collection_modifyitems(config, items):
    """Without the one-host Slurm its tests are skipped, except on CI (CI=true), where each fails saying so."""
    if not any("slurm" in item.keywords for item in items) or slurm_is_up():
        return
    on_ci = os.environ.get("CI") == "true"
    for item in items:
        if "slurm" in item.keywords:
            if on_ci:
                item.stash[REQUIRED_ON_CI] = True
            else:
                item.add_marker(pytest.mark.skip(reason=SLURM_DOWN))


def pytest_runtest_setup(item):
    if item.stash.get(REQUIRED_ON_CI, False):
        pytest.fail(f"{SLURM_DOWN}, and on CI (CI=true) the Slurm tests must run", pytrace=False)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """How many Slurm tests were skipped, when some were: a green run without them says so."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if SLURM_DOWN in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} Slurm test(s) skipped: {SLURM_DOWN}", yellow=True, bold=True)


class SmallDisk:
    """A filesystem of its own, small enough to fill: a tmpfs mounted on a fresh directory (root only)."""

    def __init__(self, root) -> None:
        self.root = root
        self.mounts: list = []

    def __call__(self, name: str, size_kb: int):
        path = self.root / name
        path.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("a small tmpfs needs root (mount -t tmpfs)")
        self.mounts.append(path)
        return path

    @staticmethod
    def resize(path, size_kb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size_kb}k", str(path)], check=True)

    @staticmethod
    def fill(path, leave_kb: int):
        """A file taking all but about `leave_kb` KB of the filesystem at `path`."""
        free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
        filler = path / "filler"
        filler.write_bytes(bytes(max(0, free - leave_kb * 1024)))
        return filler

    def unmount_all(self) -> None:
        for path in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(name, size_kb): a tmpfs of that size at tmp_path/name, unmounted after the test."""
    disks = SmallDisk(tmp_path)
    yield disks
    disks.unmount_all()


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
        "--classes", ",".join(classes), "--out", str(root / "clips"), "--num-cpus", "2",
        "--shard-clips", "8")  # a few shards: work to spread over nodes
    run("his.data.images", "--src", str(root / "data" / "PPMI"), "--out", str(root / "images"))
    run("hpc.features", f"data={root / 'clips'}", "actors=1", "figure=false")
    features = next((root / "clips" / "features").iterdir())
    return {"root": root, "clips": root / "clips", "images": root / "images", "features": features}


# --------------------------------------------------------------------------- data sets for the tests
# Every clip, feature and image set a test reads is written by his.data.small_sets.DataSets, through the project's
# own writers, so each follows datasets.h5.spec as the real ones do.


@pytest.fixture(scope="session")
def datasets(tmp_path_factory):
    """The factory of clip, feature and image sets (his.data.small_sets.DataSets)."""
    from his.data.small_sets import DataSets

    return DataSets(tmp_path_factory.mktemp)


# --------------------------------------------------------------------------- videos made with ffmpeg


class FakeVideos:
    """Test videos (the `fake_videos` fixture): frames that encode their own number, a chirp whose pitch tells
    the time (f(t) = 200 + 100 t Hz), in AVI with MPEG-4 Part 2 (xvid) and MP3 as UCF-101 has them."""

    FPS = 25

    @staticmethod
    def frame_colour(i: int) -> tuple[int, int]:
        """Red and green levels of frame i: 16 steps apart, so lossy coding cannot mistake one for another."""
        return (i % 16) * 16 + 8, (i // 16) * 16 + 8

    @staticmethod
    def frame_number(rgb) -> int:
        """Inverse of frame_colour on a decoded frame (mean over its pixels)."""
        r, g = rgb.reshape(-1, 3).mean(0)[:2]
        return int(round((r - 8) / 16)) + 16 * int(round((g - 8) / 16))

    @staticmethod
    def chirp_frequency(audio, centre_s: float = 0.1) -> float:
        """Mean instantaneous frequency (Hz) of the middle `centre_s` seconds of an int16 window."""
        import numpy as np
        from scipy.signal import hilbert

        from his.media import SAMPLE_RATE

        phase = np.unwrap(np.angle(hilbert(audio.astype(np.float64))))
        mid, half = len(audio) // 2, int(centre_s * SAMPLE_RATE / 2)
        return float((phase[mid + half] - phase[mid - half]) / (2 * np.pi) / (2 * half / SAMPLE_RATE))

    @classmethod
    def make(cls, path, duration: float = 5.0, size: tuple[int, int] = (320, 240), audio: str | None = "chirp",
             audio_codec: str = "libmp3lame", centre_box: bool = False):
        """Write a test video. audio: "chirp", "silent" or None (no audio stream). centre_box paints the
        200x190-of-320x240 centre crop (scaled to `size`) blue and the rest by frame number."""
        from pathlib import Path

        import numpy as np

        from his.media import ffmpeg_exe

        path = Path(path)
        w, h = size
        n = int(round(duration * cls.FPS))
        frames = np.empty((n, h, w, 3), np.uint8)
        for i in range(n):
            frames[i] = (*cls.frame_colour(i), 128)
        if centre_box:
            cw, ch = round(w * 200 / 320), round(h * 190 / 240)
            frames[:, (h - ch) // 2 : (h + ch) // 2, (w - cw) // 2 : (w + cw) // 2] = (0, 0, 255)
        args = [ffmpeg_exe(), "-nostdin", "-y", "-loglevel", "error",
                "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(cls.FPS), "-i", "pipe:"]  # fmt: skip
        if audio == "chirp":
            args += ["-f", "lavfi", "-i", f"aevalsrc=0.5*sin(2*PI*(200*t+50*t*t)):s=44100:d={duration}"]
        elif audio == "silent":
            args += ["-f", "lavfi", "-i", f"anullsrc=r=44100:cl=mono:d={duration}"]
        args += ["-c:v", "mpeg4", "-vtag", "xvid", "-q:v", "3"]
        args += ["-c:a", audio_codec, "-b:a", "128k"] if audio else ["-an"]
        # with MP3 in AVI the muxer otherwise shifts video timestamps by a frame to avoid negative audio ones
        args += ["-avoid_negative_ts", "disabled", "-shortest", str(path)]
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(args, input=frames.tobytes(), check=True, timeout=60)
        return path


@pytest.fixture(scope="session")
def fake_videos() -> type[FakeVideos]:
    return FakeVideos

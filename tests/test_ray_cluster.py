"""Ray inside an allocation (hpc.ray_cluster): a head and its workers come up, spread the work, and leave no
process behind however the job ends; in-process for one node, then on the one-host Slurm for two."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpc.ray_cluster import RayStartError, ray_head, temp_dir


def ray_processes(job_id: str) -> list[str]:
    """Command lines of the processes of the Ray started for `job_id` (its temp dir names the job)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(temp_dir(job_id)) in args:
            found.append(args)
    return found


def gone(job_id: str, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while ray_processes(job_id):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def test_the_head_is_torn_down_when_the_stage_fails(tmp_path):
    import ray

    job_id = f"test{time.monotonic_ns()}"
    with pytest.raises(ValueError, match="the stage failed"):
        with ray_head(tmp_path, job_id, nodes=1, cpus=1, gpus=0) as address:
            assert ray.is_initialized() and ray_processes(job_id)
            assert (tmp_path / "address").read_text() == address
            raise ValueError("the stage failed")
    assert (tmp_path / "done").exists() and not ray.is_initialized()
    assert ray_processes(job_id) == []  # stop_ray waits for the whole process group


def test_a_head_waiting_for_nodes_that_never_join_gives_up_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr("hpc.ray_cluster.JOIN_TIMEOUT_S", 8.0)
    job_id = f"test{time.monotonic_ns()}"
    with pytest.raises(RayStartError, match=r"^only 1 of 2 nodes joined Ray in 8 s$"):
        with ray_head(tmp_path, job_id, nodes=2, cpus=1, gpus=0):
            pass
    assert gone(job_id, 10)


def hpc_launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc.launch", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def finetuned(tiny_pipeline_data, tmp_path_factory) -> Path:
    """A run directory holding a fine-tuned SoundNet (one epoch of the head), what the features stage reads."""
    run_dir = tmp_path_factory.mktemp("ray-run")
    subprocess.run([sys.executable, "-m", "his.audio.finetune", f"data={tiny_pipeline_data['clips']}",
                    f"out={run_dir / 'soundnet'}", "epochs=1", "train_layers=head"], check=True, capture_output=True,
                   timeout=300)
    return run_dir


def launch_features(run_dir: Path, clips: Path, *extra: str) -> list[str]:
    return ["features", "--partition", "cpu", "--nodes", "2", "--cpus-per-task", "1", "--time", "00:20:00",
            "--run-dir", str(run_dir), f"clips={clips}", "features.figure=false", *extra]


@pytest.mark.slurm
def test_features_on_two_nodes_spread_over_ray_and_leave_nothing_behind(tiny_pipeline_data, finetuned):
    out = hpc_launch(*launch_features(finetuned, tiny_pipeline_data["clips"]), "--wait")
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.split("features: job ")[1].split()[0]
    result = json.loads((Path(out.stdout.split("'features_dir': '")[1].split("'")[0]) / "report.json").read_text())
    assert sorted(result["rows_per_node"]) == ["n1", "n2"], result  # both nodes extracted
    assert sum(result["rows_per_node"].values()) == result["rows"]
    assert gone(job_id)


@pytest.mark.slurm
def test_a_cancelled_two_node_ray_job_leaves_no_ray_behind(tiny_pipeline_data, finetuned, tmp_path):
    from hpc.launch import launch, parse_args

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "soundnet").symlink_to(finetuned / "soundnet")
    # another layer: features not made yet, so the job has work when it is cancelled
    (job,), _ = launch(parse_args(launch_features(run_dir, tiny_pipeline_data["clips"], "features.layer=conv5")))
    folder = Path(job.paths.folder)
    deadline = time.monotonic() + 180
    while not list(folder.glob("ray-*/address")):  # the head is up and the workers are joining
        assert time.monotonic() < deadline, "Ray never came up"
        time.sleep(0.5)
    assert ray_processes(str(job.job_id))
    subprocess.run(["scancel", str(job.job_id)], check=True, timeout=30)
    assert gone(str(job.job_id), 60), ray_processes(str(job.job_id))


@pytest.mark.slurm
def test_preprocess_on_two_nodes_decodes_on_both_and_a_second_launch_skips_it(tiny_pipeline_data, tmp_path):
    data = tiny_pipeline_data["root"] / "data"
    common = ["preprocess", "--partition", "cpu", "--nodes", "2", "--cpus-per-task", "1", "--time", "00:20:00",
              "--run-dir", str(tmp_path / "run"), f"clips={tmp_path / 'clips'}", f"videos={data / 'UCF-101'}",
              f"splits={data / 'ucfTrainTestlist'}", "preprocess.classes=PlayingCello,PlayingDhol,PlayingSitar",
              "preprocess.shard_clips=8"]
    out = hpc_launch(*common, "--wait")
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = out.stdout.split("preprocess: job ")[1].split()[0]
    report = json.loads((tmp_path / "clips" / "report.json").read_text())
    per_node = report["summary"]["clips_per_node"]
    assert sorted(per_node) == ["n1", "n2"], per_node  # both nodes decoded videos
    assert sum(per_node.values()) == report["summary"]["clips"]
    assert gone(job_id)
    again = hpc_launch(*common)
    assert "preprocess: skip (same config): outputs complete" in again.stdout and "nothing to do" in again.stdout

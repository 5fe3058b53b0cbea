"""The one-host Slurm of slurm/up, used the way the launcher will use it: sbatch, sacct, submitit, a job over
n1 and n2 with gloo, and requeues (submitit's interrupt, a real preemption) that resume from disk. Run: slurm/up; SLURM_CONF=.slurm/slurm.conf pytest -s
tests/test_slurm_cluster.py. Every wait has its own deadline: without accounting a job's state can stay
UNKNOWN and submitit's result() would block for ever."""
import datetime
import os
import subprocess
import sys
import time

import cloudpickle
import pytest
import submitit

from his.io import atomic_path

pytestmark = pytest.mark.slurm

# The job side cannot import this test module (pytest put tests/ on sys.path, not the job): ship its
# functions and classes by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def wait_for(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"no {what} after {timeout_s} s")


def slurm_executor(folder, **params):
    # The cluster is named explicitly: AutoExecutor's guess takes ~60 s to fail when Slurm is half there.
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(timeout_min=60, cpus_per_task=1, **params)
    return executor


def finished(job, timeout_s):
    """The job's per-task results, or a failure that shows what the job printed."""
    try:
        wait_for(job.done, timeout_s, f"result from job {job.job_id}")
    except AssertionError as e:
        raise AssertionError(f"{e}\nstdout: {job.stdout()}\nstderr: {job.stderr()}") from None
    return job.results()


def squeue_lists(job_id):
    return bool(subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True, timeout=10).stdout.strip())


def test_sbatch_round_trip(tmp_path):
    out = tmp_path / "out.txt"
    t0 = time.monotonic()
    job_id = subprocess.run(["sbatch", "--parsable", f"--output={out}", "--wrap", "echo $SLURMD_NODENAME"],
                            check=True, capture_output=True, text=True, timeout=30).stdout.strip()
    wait_for(lambda: not squeue_lists(job_id), 30, f"end of job {job_id}")
    print(f"sbatch round trip: {time.monotonic() - t0:.2f} s")
    assert out.read_text().strip() in {"n1", "n2"}


def test_sacct_records_jobs(tmp_path):
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
    if "accounting_storage/slurmdbd" not in config:
        pytest.skip("accounting is off (slurm/up starts it when slurmdbd and mariadb-server are installed)")
    job_id = subprocess.run(["sbatch", "--parsable", "--output=/dev/null", "--wrap", "true"],
                            check=True, capture_output=True, text=True, timeout=30).stdout.strip()

    def state():
        return subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id],
                              capture_output=True, text=True, timeout=10).stdout.strip()

    wait_for(lambda: state() == "COMPLETED", 30, f"COMPLETED in sacct for job {job_id}")


def add(a, b):
    return a + b


def test_submitit_job_returns_value(tmp_path):
    job = slurm_executor(tmp_path / "submitit").submit(add, 2, 3)
    assert finished(job, 30) == [5]


def allreduce_rank_plus_one():
    import torch
    import torch.distributed as dist

    env = submitit.helpers.TorchDistributedEnvironment().export()
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    value = torch.tensor([float(env.rank + 1)])
    dist.all_reduce(value)
    dist.destroy_process_group()
    return env.rank, os.environ["SLURMD_NODENAME"], value.item()


def test_two_node_gloo_all_reduce(tmp_path):
    executor = slurm_executor(tmp_path / "submitit", slurm_partition="cpu", nodes=2, tasks_per_node=1)
    t0 = time.monotonic()
    job = executor.submit(allreduce_rank_plus_one)
    results = finished(job, 60)
    print(f"2-node gloo job, submit to result: {time.monotonic() - t0:.2f} s")
    assert sorted(results) == [(0, "n1", 3.0), (1, "n2", 3.0)]


class Counter(submitit.helpers.Checkpointable):
    """Counts to `steps`, saving progress after each step; every start is logged with its wall time.
    The inherited checkpoint() resubmits the same call, which then resumes from the saved progress."""

    def __call__(self, workdir, steps):
        progress = workdir / "progress"
        done = int(progress.read_text()) if progress.exists() else 0
        with open(workdir / "starts", "a") as f:
            f.write(f"{time.time()} {done}\n")
        for step in range(done + 1, steps + 1):
            time.sleep(0.25)
            with atomic_path(progress) as tmp:  # a kill between truncate and write must not leave it empty
                tmp.write_text(str(step))
        return done


def run_counter_through(tmp_path, disrupt):
    """Start a Counter, disrupt it once it has saved some progress, check that it resumed from that
    progress and finished; returns (seconds from disruption to restart, to result)."""
    steps = 24
    job = slurm_executor(tmp_path / "submitit").submit(Counter(), tmp_path, steps)
    progress = tmp_path / "progress"
    wait_for(lambda: progress.exists() and int(progress.read_text()) >= 4, 30, "progress from the first run")

    disrupted = time.time()
    disrupt(job)
    resumed_from = finished(job, 60)[0]
    round_trip = time.time() - disrupted

    starts = [line.split() for line in (tmp_path / "starts").read_text().splitlines()]
    assert len(starts) == 2, starts
    assert int(starts[1][1]) == resumed_from >= 4  # the second run began where the first stopped
    assert int(progress.read_text()) == steps
    assert "Calling checkpoint method" in job.stdout()  # submitit's handler ran, not a plain kill
    return float(starts[1][0]) - disrupted, round_trip


def test_interrupted_job_requeues_and_resumes(tmp_path):
    # What submitit's test hook does is what a preemption does: SIGTERM, USR2, checkpoint(), requeue.
    restart, round_trip = run_counter_through(tmp_path, lambda job: job._interrupt())
    print(f"requeue after _interrupt(): restarted after {restart:.1f} s, result after {round_trip:.1f} s")


def test_urgent_job_preempts_and_the_preempted_job_resumes(tmp_path):
    def preempt(job):
        urgent = subprocess.run(["sbatch", "--parsable", "--partition=urgent", "--nodes=2", "--exclusive",
                                 "--output=/dev/null", "--wrap", "true"],
                                check=True, capture_output=True, text=True, timeout=30).stdout.strip()
        wait_for(lambda: not squeue_lists(urgent), 40, f"end of urgent job {urgent}")

    restart, round_trip = run_counter_through(tmp_path, preempt)
    print(f"requeue after preemption: restarted after {restart:.1f} s, result after {round_trip:.1f} s")

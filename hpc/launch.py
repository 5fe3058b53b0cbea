"""The front door on a cluster: submit the pipeline's stages as Slurm jobs through submitit.

    python -m hpc.launch [STAGE] --partition gpu [--nodes 2] [--gpus-per-node 8] [--run-dir DIR]
                         [--config FILE.toml] [--local] [--dry-run] [--sweep FILE.toml] [--wait] [key=value ...]

STAGE is one of preprocess, finetune, features, pretrain, train, evaluate. Without one, the whole chain is
submitted at once, each job depending on the one before (afterok); preprocess leads it when `videos=` is set
(in the layout `preprocess.layout=` names; the default ucf101 also wants `splits=`). Before anything is
submitted, each stage's plan is printed: "skip (same config)" when its outputs are complete and were made by
the config asked for, "resume", or "run", with the reason (hpc.plan); a change that would mix two configs in
one stage's outputs is refused in one line.
Keys are those of `PipelineConfig` (dotted: `train.max_steps=200`, `clips=/scratch/his/ucf`); the paths
between stages are set from the run directory, so every stage of one run reads what the one before wrote:

    CLIPS/          clip set (preprocess)               CLIPS/features/<sha>/  features (features)
    RUN/soundnet/   fine-tuned SoundNet (finetune)      RUN/pretrain/          unconditional WGAN (pretrain)
    RUN/train/      the conditional GAN (train)         RUN/eval/              results, figures, report.html

Slurm when `sbatch` is on PATH, submitit's local executor otherwise or with --local (stages then run one
after the other on this machine). DDP stages get one task per GPU (per CPU slot on a CPU partition) and the
torch.distributed environment from submitit's TorchDistributedEnvironment; the Ray stages (preprocess,
features) one task per node, with a Ray head on the first node and a worker on every other (hpc.ray_cluster).
Every job is a submitit Checkpointable: on preemption or time limit the stage checkpoints at the end of its
current step, the job requeues itself, and the requeued job resumes exactly from that checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import submitit
import tomli_w

from his.config import ConfigError, config_to_dict, load_config
from his.io import InputError, describe_holder, exclusive_dir, holder_info, write_json
from his.log import setup_logging
from hpc.plan import plan_chain, plan_stage
from hpc.ray_cluster import node_name, ray_head, ray_worker
from hpc.slurm import Resources, SlurmError, SlurmUnreachable, fit_to_partition, parse_time
from hpc.stages import (ROW, STAGE_TABLE, STAGES, LaunchError, PipelineConfig, check_two_stage, full_chain,
                        resolve_at_start, stage_inputs_missing, wire)


# ------------------------------------------------------------------------------------------- the job


class StageJob(submitit.helpers.Checkpointable):
    """One stage as a submitit job. Picklable: it carries the resolved config, not models."""

    def __init__(self, stage: str, cfg: PipelineConfig):
        self.stage = stage
        self.cfg = cfg
        self.requeues = 0

    def __call__(self) -> dict:
        setup_logging()  # the stages' status lines (his.* loggers) to stdout, the job's log
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            # Each rank picks its GPU from LOCAL_RANK, so every task keeps seeing all of its node's GPUs.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        plan_stage(self.stage, self.cfg)  # the stages before it have run: refuses a change it could not see then
        stage_cfg = resolve_at_start(self.stage, self.cfg)
        if env.global_rank == 0:
            self.log_requeues(stage_cfg, env)
        if ROW[self.stage].layout == "ray" and not stage_cfg.address:
            return self.run_on_ray(stage_cfg, env)
        result = ROW[self.stage].run(stage_cfg)
        if result.get("status") == "interrupted" and env.global_rank == 0:
            # The stage caught the preemption/time-limit signal and checkpointed at a step boundary; now let
            # submitit's own handler call checkpoint() and requeue this job.
            signal.raise_signal(signal.SIGUSR2)
        return result

    def run_on_ray(self, stage_cfg: Any, env: submitit.JobEnvironment) -> dict:
        """The stage as the driver of a Ray brought up across the job's nodes (task 0); the other tasks are its
        worker nodes until it is done. Ray is torn down on every node however the job ends."""
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0")  # a requeued job meets in a folder of its own
        rendezvous = Path(env.paths.folder) / f"ray-{env.job_id}-{attempt}"
        rendezvous.mkdir(parents=True, exist_ok=True)
        cpus = int(os.environ.get("SLURM_CPUS_PER_TASK", os.cpu_count() or 1))
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        gpus = len(visible.split(",")) if visible else 0
        if env.global_rank != 0:
            ray_worker(rendezvous, env.job_id, cpus, gpus)
            return {"status": "completed", "ray_worker": node_name()}
        with ray_head(rendezvous, env.job_id, env.num_nodes, cpus, gpus) as address:
            fill = {}  # the feature actors fill the allocation
            if hasattr(stage_cfg, "actors"):
                fill["actors"] = max(1, int(env.num_nodes * cpus // stage_cfg.cpus_per_actor))
            return ROW[self.stage].run(dataclasses.replace(stage_cfg, address=address, **fill))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        self.requeues += 1
        return submitit.helpers.DelayedSubmission(self)

    def log_requeues(self, stage_cfg: Any, env: submitit.JobEnvironment) -> None:
        out = Path(getattr(stage_cfg, "out", "") or self.cfg.train.out)
        restarts = max(self.requeues, int(os.environ.get("SLURM_RESTART_COUNT", "0")))
        print(f"hpc.launch: stage {self.stage}, job {env.job_id}, requeues so far: {restarts}, "
              f"GPUs {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'}", flush=True)
        if restarts:
            from torch.utils.tensorboard import SummaryWriter

            # A run of its own beside the stage's log: its steps are requeue counts, not training steps.
            with SummaryWriter(str(out / "tb" / "launch")) as writer:
                writer.add_scalar("launch/requeues", restarts, restarts)


# ------------------------------------------------------------------------------------------ requests


def check_run_dir(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise LaunchError(f"run dir {run_dir} is not writable: {e.strerror or e}") from None


def make_executor(folder: Path, cluster: str, stage: str, res: Resources) -> submitit.AutoExecutor:
    layout = ROW[stage].layout
    ddp = layout == "ddp"
    spread = layout in ("ddp", "ray")  # over every node of the request
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    params: dict[str, Any] = dict(
        name=f"his-{stage}",
        timeout_min=res.time_min,
        nodes=res.nodes if spread else 1,
        tasks_per_node=(res.gpus_per_node or res.tasks_per_node) if ddp else 1,
        cpus_per_task=res.cpus_per_task,
        stderr_to_stdout=True,
    )
    if res.gpus_per_node:
        params["gpus_per_node"] = 1 if layout == "task" else res.gpus_per_node
    if cluster == "slurm":
        params.update({f"slurm_{k}": v for k, v in dict(partition=res.partition, account=res.account, qos=res.qos,
                                                          constraint=res.constraint, mem=res.mem).items() if v})
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor: submitit.AutoExecutor) -> str:
    inner = executor._executor  # submitit has no public call that renders the script without submitting
    return inner._make_submission_file_text(inner._submitit_command_str, uid="dry-run")


def sweep_overrides(path: Path) -> list[list[str]]:
    """A TOML file of lists per key (`"train.alpha" = [0.1, 0.25]` or tables) -> one override list per point."""
    with open(path, "rb") as f:
        table = tomllib.load(f)

    def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
        flat: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                flat.update(flatten(v, f"{prefix}{k}."))
            else:
                flat[f"{prefix}{k}"] = v
        return flat

    flat = flatten(table)
    for key, values in flat.items():
        if not isinstance(values, list) or not values:
            raise LaunchError(f"{path}: {key} must be a non-empty list of values")
    keys = list(flat)
    return [[f"{k}={tomli_w.dumps({'v': v}).split('=', 1)[1].strip()}" for k, v in zip(keys, point)]
            for point in itertools.product(*(flat[k] for k in keys))]


class JobFailed(LaunchError):
    """A submitted job ended without a result: the message is one line with the job's own reason."""


def job_failure(job: submitit.Job, e: Exception) -> str:
    """One line for a failed job: its id and stage, the error it raised (the last line of its traceback), or
    for a job killed from outside (time limit, memory, scancel) the state Slurm gives, and its log."""
    text = str(e)
    if isinstance(e, submitit.core.utils.FailedJobError) and text.count("-" * 22) >= 2:
        trace = [line.strip() for line in text.split("-" * 22)[1].splitlines() if line.strip()]
        reason = re.sub(r"^(?:\w+\.)+(?=\w+(?:Error|Exception|Interrupt|Exit)\b)", "", trace[-1]) if trace else "?"
    else:
        state = re.search(r"\(state: ([^)]+)\)", text)
        reason = f"ended without a result (state {state[1] if state else 'unknown'})"
    return f"job {job.job_id} ({stage_of(job)}) failed: {reason} (log {job.paths.stdout})"


def stage_of(job: submitit.Job) -> str:
    """The stage a job runs, from its submitted pickle ("?" when that is gone)."""
    try:
        return job.submission().function.stage
    except Exception:  # any failure to read it back: say what we can
        return "?"


def wait_for(jobs: list[submitit.Job], timeout_s: float) -> list[list[Any]]:
    """Every task's result of each job, polling with our own deadline (sacct may be absent on small clusters).
    A job that failed is JobFailed, saying why in one line; the jobs after it (which depend on it) are not
    waited for."""
    deadline = time.monotonic() + timeout_s
    results = []
    for job in jobs:
        while not job.done():
            if time.monotonic() > deadline:
                raise LaunchError(f"job {job.job_id} not done after {timeout_s:.0f} s")
            time.sleep(1.0)
        try:
            results.append(job.results())
        except (submitit.core.utils.FailedJobError, submitit.core.utils.UncompletedJobError) as e:
            raise JobFailed(job_failure(job, e)) from None
    return results


LAUNCH_RECORD = "launch.json"  # RUN/launch.json: the launcher that last submitted into RUN, and its jobs


def refuse_if_queued(run_dir: Path) -> None:
    """LaunchError naming the launcher and its jobs when jobs an earlier launcher submitted into `run_dir`
    (its launch.json) are still in Slurm's queue, pending or running."""
    record = run_dir / LAUNCH_RECORD
    if not record.is_file() or not shutil.which("squeue"):
        return
    try:
        earlier = json.loads(record.read_text())
        stages = {str(j["job_id"]).split("_")[0]: j["stage"] for j in earlier["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return  # a record we cannot read vouches for nothing
    try:
        listed = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return
    queued = sorted({i.split("_")[0] for i in listed.split()} & set(stages), key=int)
    if queued:
        raise LaunchError(f"{run_dir} is in use by the jobs of {describe_holder(earlier.get('launcher'))}: "
                          + ", ".join(f"{i} ({stages[i]})" for i in queued)
                          + " still queued or running; wait for them, or scancel them")


# ---------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hpc.launch", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--partition", help="Slurm partition (sinfo lists them)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=None,
                   help="default: what the partition's nodes have (0 on a CPU partition)")
    p.add_argument("--tasks-per-node", type=int, default=1, help="DDP ranks per node when there are no GPUs")
    p.add_argument("--cpus-per-task", type=int, default=2)
    p.add_argument("--mem", help="memory per node, e.g. 64G")
    p.add_argument("--time", default="04:00:00", help="time limit per job, [D-]HH:MM:SS")
    p.add_argument("--account")
    p.add_argument("--qos")
    p.add_argument("--constraint")
    p.add_argument("--run-dir", default="runs/his", help="on a shared filesystem when on a cluster")
    p.add_argument("--config", help="TOML file with PipelineConfig keys")
    p.add_argument("--local", action="store_true", help="submitit's local executor (stages run in order here)")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script(s) and config, submit nothing")
    p.add_argument("--sweep", help="TOML file of value lists per key: one array job over their product")
    p.add_argument("--wait", action="store_true", help="wait for the jobs and print their results")
    p.add_argument("--wait-timeout", type=float, default=24 * 3600.0)
    p.add_argument("items", nargs="*", metavar="[STAGE] key=value",
                   help=f"STAGE: one of {', '.join(STAGES)} (none = the whole chain); then config overrides")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_intermixed_args(argv)
    args.stage = args.items.pop(0) if args.items and "=" not in args.items[0] else None
    args.overrides = args.items
    if args.stage is not None and args.stage not in STAGES:
        parser.error(f"unknown stage {args.stage!r} (choose from {', '.join(STAGES)})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        with contextlib.ExitStack() as hold:  # the run dir's lock, held while this launcher waits for its jobs
            jobs, waiting = launch(args, hold)
            if waiting:
                for job, results in zip(jobs, wait_for(jobs, args.wait_timeout)):
                    print(f"hpc.launch: job {job.job_id} finished: {results[0]}")
    except JobFailed as e:
        print(f"hpc.launch: {e}", file=sys.stderr)
        return 1
    except (LaunchError, SlurmError, ConfigError, InputError) as e:
        print(f"hpc.launch: {e}", file=sys.stderr)
        return 2
    return 0


def launch(args: argparse.Namespace, hold: contextlib.ExitStack | None = None) -> tuple[list[submitit.Job], bool]:
    """Validate, take the run directory's lock (refused, naming the holder, while another launcher holds it
    or its jobs are still queued), then submit; returns the jobs and whether the caller should wait for
    them. The lock is held until `hold` closes (by default, until this returns)."""
    with contextlib.ExitStack() as own:
        return _launch(args, own if hold is None else hold)


def _launch(args: argparse.Namespace, hold: contextlib.ExitStack) -> tuple[list[submitit.Job], bool]:
    run_dir = Path(args.run_dir).resolve()
    cfg = wire(load_config(PipelineConfig, args.config, args.overrides), run_dir)
    cluster = "local" if args.local or not shutil.which("sbatch") else "slurm"
    if args.dry_run:
        cluster = "slurm"
    res = Resources(args.partition, args.nodes, args.gpus_per_node or 0, args.tasks_per_node, args.cpus_per_task,
                    args.mem, parse_time(args.time), args.account, args.qos, args.constraint)
    if cluster == "slurm" and shutil.which("sinfo"):
        try:
            res = fit_to_partition(res, args.gpus_per_node)
        except SlurmUnreachable as e:
            if not args.dry_run:
                raise
            print(f"hpc.launch: dry run: partition {res.partition or '(default)'} not checked: {e}")
    elif cluster == "slurm":  # sbatch without sinfo, or a dry run on a machine with neither
        print(f"hpc.launch: {'dry run: ' if args.dry_run else ''}partition {res.partition or '(default)'} "
              "not checked: no sinfo on PATH")
    elif cluster == "local":  # the local executor runs every task on this machine
        gpus = res.gpus_per_node
        if args.gpus_per_node is None:
            import torch

            gpus = torch.cuda.device_count()
        res = dataclasses.replace(res, nodes=1, gpus_per_node=gpus)

    check_two_stage(cfg)
    chain = [args.stage] if args.stage else full_chain(cfg)
    if args.sweep and (args.stage is None or not ROW[args.stage].out):  # each point gets its own out dir
        raise LaunchError(f"--sweep needs one of the stages {', '.join(s.name for s in STAGE_TABLE if s.out)}")
    for stage in chain:
        missing = stage_inputs_missing(stage, cfg, chain)
        if missing:
            raise LaunchError(missing)
        if ROW[stage].check:
            try:
                ROW[stage].check(ROW[stage].config(cfg))
            except ConfigError as e:
                raise LaunchError(f"{stage}: {e}") from None
    if args.sweep:  # every point writes a fresh out dir of its own
        todo = chain
    else:
        plans = plan_chain(cfg, chain)
        for plan in plans:
            print(f"hpc.launch: {plan.line()}")
        todo = [p.stage for p in plans if p.action != "skip"]
    if not args.dry_run:
        check_run_dir(run_dir)
        hold.enter_context(exclusive_dir(run_dir, "hpc.launch"))  # before anything is submitted
        refuse_if_queued(run_dir)
    folder = run_dir / "submitit" / time.strftime("%Y%m%d-%H%M%S")  # fresh per launch: job ids may repeat

    if args.dry_run:
        for stage in todo:
            print(f"# ---- stage {stage}: sbatch script\n{sbatch_script(make_executor(folder, cluster, stage, res))}")
        print(f"# ---- resolved config\n{tomli_w.dumps(config_to_dict(cfg))}")
        return [], False
    if not todo:
        print("hpc.launch: nothing to do")
        return [], False

    jobs: list[submitit.Job] = []
    for stage in todo:
        executor = make_executor(folder, cluster, stage, res)
        if cluster == "slurm" and jobs:
            executor.update_parameters(slurm_dependency=f"afterok:{jobs[-1].job_id}")
        if args.sweep:
            points = sweep_overrides(Path(args.sweep))
            stage_jobs = []
            for i, overrides in enumerate(points):
                point = wire(load_config(PipelineConfig, args.config, [*args.overrides, *overrides]), run_dir)
                out = str(run_dir / "sweep" / f"{stage}-{i:03d}")
                point = dataclasses.replace(point, **{stage: dataclasses.replace(getattr(point, stage), out=out)})
                stage_jobs.append(StageJob(stage, point))
            with executor.batch():
                submitted = [executor.submit(job) for job in stage_jobs]
            print(f"hpc.launch: {stage}: array job of {len(submitted)} points: "
                  + ", ".join(f"{j.job_id} {' '.join(o)}" for j, o in zip(submitted, points)))
            jobs.extend(submitted)
            continue
        job = executor.submit(StageJob(stage, cfg))
        print(f"hpc.launch: {stage}: job {job.job_id} ({cluster}), log {folder / job.job_id}")
        jobs.append(job)
        if cluster == "local" and stage != todo[-1]:
            wait_for([job], args.wait_timeout)  # the local executor knows no dependencies
    if cluster == "slurm":  # what a second launcher into this run dir must wait for
        write_json(run_dir / LAUNCH_RECORD, {"launcher": holder_info("hpc.launch"), "jobs": [
            {"job_id": job.job_id, "stage": stage_of(job)} for job in jobs]})
    print(f"hpc.launch: run dir {run_dir}")
    print(f"hpc.launch: logs under {folder}")
    print(f"hpc.launch: watch with: tensorboard --logdir {run_dir}")
    return jobs, args.wait or cluster == "local"


if __name__ == "__main__":
    sys.exit(main())

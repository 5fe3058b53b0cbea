"""hpc.launch: its pure functions, then against the real one-host Slurm (slurm/up) and submitit's local executor."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from his.config import ConfigError, load_config, save_config
from his.data.feature_sets import features_dir_for
from his.data.shards import sha256_file
from his.io import exclusive_dir
from his.train import TrainConfig, run
from hpc.launch import launch, parse_args, sweep_overrides, wait_for
from hpc.plan import StagePlan, plan_chain, plan_stage
from hpc.stages import (DATA_SETS, STAGE_TABLE, STAGES, LaunchError, PipelineConfig, features_dir, full_chain,
                        resolve_at_start, stage_done, stage_inputs_missing, wire)
from hpc.slurm import SlurmError, parse_time

TINY_TRAIN = ["train.ngf=8", "train.ndf=8", "train.batch_size=8", "train.log_every=1", "train.sample_every=1000",
              "train.hist_every=100000", "train.ckpt_every=1000"]


def hpc_launch(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hpc.launch", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def data_args(data) -> list[str]:
    return [f"clips={data['clips']}", f"train.features={data['features']}"]


def squeue_count() -> int:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return len(out.stdout.split())


# ------------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("text, minutes", [
    ("45", 45), ("45:00", 45), ("45:01", 46), ("04:00:00", 240), ("01:30:01", 91), ("2-3", 2 * 1440 + 180),
    ("2-03:30", 2 * 1440 + 210), ("1-00:00:00", 1440), ("1-00:00:01", 1441), (" 10 ", 10),
])
def test_parse_time_reads_every_slurm_format(text, minutes):
    assert parse_time(text) == minutes


@pytest.mark.parametrize("text", ["", "abc", "1:2:3:4", "1-", "-5", "1-2-3", "1.5", "10:", "1-2:3:4:5"])
def test_parse_time_rejects_what_slurm_would_not_take(text):
    with pytest.raises(SlurmError, match="not a Slurm time limit .*D-HH:MM:SS"):
        parse_time(text)


def test_sweep_expands_to_the_product_in_file_order(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('"train.alpha" = [0.1, 0.25]\n[train]\nobjective = ["wgan-gp", "gan-cls"]\n')
    points = sweep_overrides(path)
    assert points == [[f"train.alpha={a}", f'train.objective="{o}"'] for a in (0.1, 0.25) for o in ("wgan-gp", "gan-cls")]
    assert sweep_overrides(path) == points
    cfg = load_config(PipelineConfig, None, points[-1])
    assert (cfg.train.alpha, cfg.train.objective) == (0.25, "gan-cls")
    for bad in ('"train.alpha" = 0.1\n', '"train.alpha" = []\n'):
        path.write_text(bad)
        with pytest.raises(LaunchError, match="train.alpha must be a non-empty list"):
            sweep_overrides(path)


def wired(tmp_path, **kw) -> PipelineConfig:
    (tmp_path / "clips").mkdir(exist_ok=True)
    return wire(PipelineConfig(clips=str(tmp_path / "clips"), **kw), tmp_path / "run")


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_finetuned(path: Path, layer: str = "conv7") -> None:
    """A file where the fine-tuned SoundNet goes, with what the features stage reads of it before extracting."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"layer": layer}, path)


def test_wire_joins_each_stage_to_what_it_reads(tmp_path):
    cfg = wired(tmp_path, images="images")
    run_dir = tmp_path / "run"
    assert cfg.finetune.data == cfg.features.data == cfg.train.clips == str(tmp_path / "clips")
    assert cfg.pretrain.images == str(Path("images").resolve())
    assert cfg.features.checkpoint == str(run_dir / "soundnet" / "soundnet_finetuned.pt")
    assert cfg.finetune.out == str(run_dir / "soundnet") and cfg.evaluate.out == str(run_dir / "eval")
    assert cfg.evaluate.run == cfg.train.out == str(run_dir / "train")
    assert cfg.train.features == "" and cfg.train.init_from == ""  # found as train starts


def test_stage_done_wants_complete_valid_outputs(tmp_path):
    cfg = wired(tmp_path)
    assert not any(stage_done(s, cfg) for s in STAGES)  # nothing there yet
    summary = Path(cfg.train.out) / "summary.json"
    for text, done in [("not json", False), ('{"status": "interrupted"}', False), ('{"step": 3}', True),
                       ('{"status": "completed"}', True)]:
        write(summary, text)
        assert stage_done("train", cfg) is done, text
    write(Path(cfg.finetune.out) / "summary.json", '{"status": "completed"}')
    assert not stage_done("finetune", cfg)  # no checkpoint beside it
    fake_finetuned(Path(cfg.features.checkpoint))
    assert stage_done("finetune", cfg)
    write(Path(cfg.evaluate.out) / "results.json", "{}")
    assert stage_done("evaluate", cfg)


def test_features_are_done_once_every_clip_has_its_row(datasets, tmp_path):
    cfg = wired(tmp_path)
    fake_finetuned(Path(cfg.features.checkpoint))
    sha = sha256_file(Path(cfg.features.checkpoint))
    datasets.clips(cfg.clips, ["A", "B"], label=[0, 1, 0], split=[0, 0, 1], window_s=0.1)
    assert datasets.features(cfg.clips, dim=2, sha256=sha) == features_dir_for(cfg.clips, sha)
    assert stage_done("features", cfg)
    datasets.clips(cfg.clips, ["A", "B"], label=[0, 1, 0, 1], split=[0, 0, 1, 1], window_s=0.1)  # a clip more since
    assert not stage_done("features", cfg)
    datasets.features(cfg.clips, dim=2, sha256=sha)
    assert stage_done("features", cfg)


def test_inputs_made_earlier_in_the_chain_need_not_exist_yet(tmp_path):
    cfg = wired(tmp_path)
    chain = full_chain(cfg)
    assert chain == ["finetune", "features", "train", "evaluate"]  # no image set: no pretrain
    clips_index = Path(cfg.clips) / "index.h5"
    assert stage_inputs_missing("finetune", cfg, chain) == \
        f"finetune: missing input {clips_index} (made by stage preprocess)"
    with_videos = wired(tmp_path, videos="videos", splits="lists")  # the chain then makes the clip set first
    assert full_chain(with_videos) == ["preprocess", *chain]
    assert with_videos.preprocess.out == with_videos.clips and with_videos.preprocess.videos == str(Path("videos").resolve())
    assert stage_inputs_missing("finetune", with_videos, full_chain(with_videos)) is None
    assert stage_inputs_missing("preprocess", with_videos, ["preprocess"]) == \
        f"preprocess: missing input {Path('videos').resolve()}"
    write(clips_index)
    assert all(stage_inputs_missing(s, cfg, chain) is None for s in chain)
    assert stage_inputs_missing("features", cfg, ["features"]) == \
        f"features: missing input {cfg.features.checkpoint} (made by stage finetune)"
    assert stage_inputs_missing("train", cfg, ["train"]) == \
        f"train: missing input {cfg.features.checkpoint} (made by stage finetune)"
    assert stage_inputs_missing("evaluate", cfg, ["evaluate"]) == \
        f"evaluate: missing input {Path(cfg.train.out) / 'summary.json'} (made by stage train)"
    assert stage_inputs_missing("pretrain", cfg, ["pretrain"]) == f"pretrain: no {DATA_SETS['images']}"
    given = tmp_path / "my-features"
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, features=str(given)))
    assert stage_inputs_missing("train", cfg, chain) == f"train: missing input {given}"  # named, so never made here
    given.mkdir()
    assert stage_inputs_missing("train", cfg, ["train"]) is None


def test_the_stage_table_has_one_row_per_stage_in_dependency_order():
    pipeline = PipelineConfig()
    stage_fields = [f.name for f in dataclasses.fields(pipeline) if dataclasses.is_dataclass(getattr(pipeline, f.name))]
    assert sorted(STAGES) == sorted(stage_fields) and len(set(STAGES)) == len(STAGES)
    for position, row in enumerate(STAGE_TABLE):
        config_fields = {f.name for f in dataclasses.fields(row.config(pipeline))}
        assert row.outputs or row.done, row.name
        assert not row.out or "out" in config_fields, row.name
        for i in row.inputs:
            assert not i.field or i.field in config_fields, (row.name, i)
            assert i.source in DATA_SETS or i.source in STAGES[:position], f"{row.name} reads {i.source} before it runs"


def finished_stage(cfg: PipelineConfig, stage: str, outputs: tuple[str, ...] = ("summary.json",)) -> Path:
    """The stage's outputs as if it had completed with the config it has in `cfg` (its config.toml saved)."""
    row = next(r for r in STAGE_TABLE if r.name == stage)
    out = Path(row.config(cfg).out)
    for name in outputs:
        write(out / name, '{"status": "completed"}')
    save_config(resolve_at_start(stage, cfg, resolved=True), out / "config.toml")
    return out


def test_a_stage_is_skipped_only_when_the_same_config_made_its_outputs(tmp_path):
    cfg = wired(tmp_path)
    fake_finetuned(Path(cfg.features.checkpoint))
    assert plan_stage("train", cfg) == StagePlan("train", "run", "no outputs yet")
    finished_stage(cfg, "train")
    assert plan_stage("train", cfg) == StagePlan("train", "skip", "outputs complete")

    longer = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=50))
    assert plan_stage("train", longer) == StagePlan("train", "resume", "max_steps 0 -> 50")
    wider = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ngf=32, objective="gan-cls"))
    with pytest.raises(LaunchError, match=r"^train: .*/train was made with another config \(objective 'hinge' -> "
                                          r"'gan-cls', .* \(and \d+ more\)\); set it back, use another --run-dir"):
        plan_stage("train", wider)
    (Path(cfg.train.out) / "summary.json").unlink()  # nothing kept that the change would mix with: runs afresh
    assert plan_stage("train", wider).action == "run"

    # evaluation is cheap to redo and nothing builds on it: a changed config reruns it
    out = finished_stage(cfg, "evaluate", ("results.json",))
    assert plan_stage("evaluate", cfg).action == "skip"
    more = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, k=cfg.evaluate.k + 1))
    assert plan_stage("evaluate", more) == StagePlan("evaluate", "run", f"config changed (k {cfg.evaluate.k} -> "
                                                                        f"{cfg.evaluate.k + 1})")
    (out / "config.toml").write_text("not = [toml")
    assert "config.toml 'unreadable" in plan_stage("evaluate", cfg).why


def test_downstream_stages_run_after_one_that_runs(datasets, tmp_path):
    cfg = wired(tmp_path)
    datasets.clips(cfg.clips, ["A", "B"], label=[0, 1, 0], split=[0, 0, 1], window_s=0.1)
    fake_finetuned(Path(cfg.features.checkpoint))
    finished_stage(cfg, "finetune", ("summary.json",))
    finished_stage(cfg, "train")
    finished_stage(cfg, "evaluate", ("results.json",))
    plans = plan_chain(cfg, ["finetune", "features", "train", "evaluate"])
    assert [(p.action, p.why) for p in plans] == [
        ("skip", "outputs complete"), ("run", f"no features of this checkpoint and layer yet ({features_dir(cfg)})"),
        ("resume", "after features"), ("run", "after train")]
    with pytest.raises(LaunchError, match="finetune: .* was made with another config \\(lr 0.001 -> 0.01\\)"):
        plan_stage("finetune", dataclasses.replace(cfg, finetune=dataclasses.replace(cfg.finetune, lr=0.01)))


def test_features_of_another_layer_go_to_a_directory_of_their_own(tmp_path):
    cfg = wired(tmp_path)
    fake_finetuned(Path(cfg.features.checkpoint), layer="conv7")
    own = features_dir(cfg)
    sha = sha256_file(Path(cfg.features.checkpoint))
    assert own == features_dir_for(cfg.clips, sha)
    for layer in ("", "conv7"):
        same = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, layer=layer))
        assert features_dir(same) == own
    conv5 = dataclasses.replace(cfg, features=dataclasses.replace(cfg.features, layer="conv5"))
    assert features_dir(conv5) == own.with_name(f"{sha[:12]}-conv5")
    write(Path(cfg.features.checkpoint), "not a checkpoint")
    with pytest.raises(LaunchError, match=r"^features: .*soundnet_finetuned.pt: not a checkpoint torch can load"):
        features_dir(cfg)


def test_the_trainer_refuses_to_resume_a_checkpoint_of_another_config(tiny_pipeline_data, tmp_path):
    cfg = TrainConfig(clips=str(tiny_pipeline_data["clips"]), features=str(tiny_pipeline_data["features"]),
                      out=str(tmp_path / "train"), ngf=8, ndf=8, batch_size=8, log_every=1, sample_every=1000,
                      hist_every=100000, ckpt_every=1000, max_steps=2)
    run(cfg)
    for changed, said in [(dict(ngf=16), "ngf 8 -> 16"), (dict(seed=1), "seed 0 -> 1")]:
        with pytest.raises(ConfigError, match=f"was trained with another config \\({said}\\)"):
            run(dataclasses.replace(cfg, **changed))
    assert run(dataclasses.replace(cfg, max_steps=3, log_every=2))["step"] == 3  # longer, logged otherwise: resumes


# ------------------------------------------------------------------------------------ the launcher


def test_missing_input_and_unwritable_run_dir_fail_with_one_line(tiny_pipeline_data, tmp_path):
    out = hpc_launch("train", "--local", "--run-dir", str(tmp_path / "r"), f"clips={tmp_path / 'nothing'}")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "missing input" in out.stderr and "index.h5" in out.stderr
    out = hpc_launch("train", "--local", "--run-dir", "/proc/his-run", *data_args(tiny_pipeline_data))
    assert out.returncode == 2 and "not writable" in out.stderr and out.stderr.strip().count("\n") == 0
    assert not (tmp_path / "r" / "submitit").exists()


def test_runs_locally_when_there_is_no_sbatch(tiny_pipeline_data, tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}
    out = hpc_launch("train", "--run-dir", str(tmp_path / "run"), *data_args(tiny_pipeline_data), *TINY_TRAIN,
                     "train.max_steps=3", env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(local)" in out.stdout and "'status': 'completed'" in out.stdout
    assert "tensorboard --logdir" in out.stdout
    assert (tmp_path / "run" / "train" / "summary.json").exists()


def test_relaunching_with_a_changed_config_resumes_refuses_or_skips(tiny_pipeline_data, tmp_path):
    launch_train = lambda *extra: hpc_launch("train", "--local", "--run-dir", str(tmp_path),
                                             *data_args(tiny_pipeline_data), *TINY_TRAIN, *extra)
    summary = lambda: json.loads((tmp_path / "train" / "summary.json").read_text())
    out = launch_train("train.max_steps=2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "hpc.launch: train: run: no outputs yet" in out.stdout and summary()["step"] == 2
    out = launch_train("train.max_steps=2")
    assert "train: skip (same config): outputs complete" in out.stdout and "nothing to do" in out.stdout
    out = launch_train("train.max_steps=3")
    assert out.returncode == 0 and "train: resume: max_steps 2 -> 3" in out.stdout and summary()["step"] == 3
    before = sorted(p.name for p in (tmp_path / "train" / "checkpoints").iterdir())
    out = launch_train("train.max_steps=3", "train.objective=gan-cls")
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "was made with another config (objective 'hinge' -> 'gan-cls'" in out.stderr
    assert sorted(p.name for p in (tmp_path / "train" / "checkpoints").iterdir()) == before and summary()["step"] == 3


def test_a_second_launcher_is_refused_naming_the_first_before_it_submits(tiny_pipeline_data, tmp_path):
    with exclusive_dir(tmp_path / "run", "hpc.launch"):  # a first launcher, still submitting or waiting
        out = hpc_launch("train", "--local", "--run-dir", str(tmp_path / "run"), *data_args(tiny_pipeline_data),
                         *TINY_TRAIN, "train.max_steps=2")
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(f"hpc.launch: {tmp_path / 'run'} is in use by hpc.launch (pid {os.getpid()} on ")
    assert not (tmp_path / "run" / "submitit").exists()


def test_a_failed_job_is_its_own_one_line_reason_in_the_launchers_output(tiny_pipeline_data, tmp_path):
    """The job raises (its out is held by another writer); the launcher says what it raised, not only where
    its log is."""
    with exclusive_dir(tmp_path / "train", "another his.train"):
        out = hpc_launch("train", "--local", "--run-dir", str(tmp_path), *data_args(tiny_pipeline_data),
                         *TINY_TRAIN, "train.max_steps=2")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert re.match(rf"hpc\.launch: job \d+ \(train\) failed: InputError: {tmp_path / 'train'} is in use by "
                    rf"another his\.train \(pid {os.getpid()} .* \(log .*_log\.out\)$", out.stderr), out.stderr


def test_dry_run_without_a_reachable_cluster_prints_the_scripts_and_says_so(tiny_pipeline_data, tmp_path):
    conf = tmp_path / "slurm.conf"  # a controller on a port nothing listens on
    conf.write_text("ClusterName=nowhere\nSlurmctldHost=localhost\nSlurmctldPort=9\n")
    out = hpc_launch("train", "--dry-run", "--partition", "gpu", "--nodes", "2", "--gpus-per-node", "4",
                     "--run-dir", str(tmp_path / "run"), *data_args(tiny_pipeline_data),
                     env={**os.environ, "SLURM_CONF": str(conf)})
    assert out.returncode == 0, out.stderr
    said = [line for line in out.stdout.splitlines() if "not checked" in line]
    assert len(said) == 1 and said[0].startswith("hpc.launch: dry run: partition gpu not checked: sinfo failed: ")
    assert "#SBATCH --gpus-per-node=4" in out.stdout and "#SBATCH --nodes=2" in out.stdout
    assert "Traceback" not in out.stderr and not (tmp_path / "run" / "submitit").exists()


@pytest.mark.slurm
def test_bad_partition_and_too_many_nodes_submit_nothing(tiny_pipeline_data, tmp_path):
    before = squeue_count()
    out = hpc_launch("train", "--partition", "nonesuch", "--run-dir", str(tmp_path), *data_args(tiny_pipeline_data))
    assert out.returncode == 2 and "unknown partition 'nonesuch'" in out.stderr and "cpu" in out.stderr
    out = hpc_launch("train", "--partition", "gpu", "--nodes", "3", "--run-dir", str(tmp_path),
                     *data_args(tiny_pipeline_data))
    assert out.returncode == 2 and "has only 2 node(s)" in out.stderr
    out = hpc_launch("train", "--partition", "gpu", "--cpus-per-task", "2", "--run-dir", str(tmp_path),
                     *data_args(tiny_pipeline_data))  # one rank per GPU: 2 x 2 CPUs on a 2-CPU node
    assert out.returncode == 2 and out.stderr == "hpc.launch: 2 task(s) per node x --cpus-per-task 2 = 4 CPUs: " \
                                                 "partition 'gpu' nodes have 2\n"
    assert squeue_count() == before and not (tmp_path / "submitit").exists()


@pytest.mark.slurm
def test_a_second_launcher_on_slurm_waits_for_the_first_ones_jobs(tiny_pipeline_data, tmp_path):
    """The first launcher has exited, its chain still in the queue: a second one is refused, naming the jobs,
    and submits nothing."""
    args = ["train", "--partition", "cpu", "--time", "00:10:00", "--run-dir", str(tmp_path),
            *data_args(tiny_pipeline_data), *TINY_TRAIN, "train.max_steps=100000"]
    jobs, _ = launch(parse_args(args))
    try:
        before = squeue_count()
        out = hpc_launch(*args)
        assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr
        assert f"is in use by the jobs of hpc.launch (pid {os.getpid()} on " in out.stderr
        assert f"{jobs[0].job_id} (train) still queued or running; wait for them, or scancel them" in out.stderr
        assert squeue_count() == before
    finally:
        # SIGKILL first: a plain scancel is a SIGTERM, which the training job takes for a preemption and
        # requeues itself on (left running, with max_steps=100000, it ate the CPU of the rest of the suite);
        # a killed job may still come back requeued, pending: cancel until none of them is left
        ids = [j.job_id for j in jobs]
        subprocess.run(["scancel", "--signal=KILL", "--full", *ids], timeout=30)
        for _ in range(120):
            subprocess.run(["scancel", *ids], timeout=30)
            listed = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)], capture_output=True,
                                    text=True, timeout=30).stdout.split()
            if not listed:
                break
            time.sleep(0.5)


@pytest.mark.slurm
def test_dry_run_prints_a_script_sbatch_accepts(tiny_pipeline_data, tmp_path):
    out = hpc_launch("train", "--dry-run", "--partition", "gpu", "--nodes", "2", "--cpus-per-task", "1",
                     "--time", "00:30:00", "--run-dir", str(tmp_path), *data_args(tiny_pipeline_data))
    assert out.returncode == 0, out.stderr
    script = out.stdout.split("# ---- stage train: sbatch script\n")[1].split("# ---- resolved config")[0]
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=gpu" in script
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --ntasks-per-node=2" in script  # the nodes' GRES
    assert "[train]" in out.stdout  # the resolved config follows
    path = tmp_path / "train.sbatch"
    path.write_text(script)
    check = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    assert not (tmp_path / "submitit").exists()


@pytest.mark.slurm
def test_two_gpu_nodes_two_tasks_each_ranks_agree_and_rank0_logs_once(tiny_pipeline_data, tmp_path):
    """The gpu partition's nodes have 2 GPUs each as GRES: without --gpus-per-node the launcher asks for both,
    one task per GPU, and Slurm hands each task CUDA_VISIBLE_DEVICES; torch finds no CUDA and uses gloo."""
    args = parse_args(["train", "--partition", "gpu", "--nodes", "2", "--cpus-per-task", "1", "--time", "00:20:00",
                       "--run-dir", str(tmp_path), *data_args(tiny_pipeline_data), *TINY_TRAIN, "train.max_steps=4",
                       "train.global_batch_size=8"])
    jobs, _ = launch(args)
    (results,) = wait_for(jobs, timeout_s=300)
    assert len(results) == 4 and all(r["status"] == "completed" for r in results)
    assert len({r["weights_sha256"] for r in results}) == 1
    events = EventAccumulator(str(tmp_path / "train" / "tb"))
    events.Reload()
    steps = [e.step for e in events.Scalars("loss/critic_loss")]
    assert steps == sorted(set(steps)) and len(steps) == 4  # written by one rank only
    log = next(Path(jobs[0].paths.folder).glob("*_0_log.out")).read_text()
    assert "4 rank(s), global batch 8 (2 per rank)" in log and "GPUs 0,1" in log
    script = Path(jobs[0].paths.submission_file).read_text()
    assert "#SBATCH --gpus-per-node=2" in script and "#SBATCH --ntasks-per-node=2" in script


@pytest.mark.slurm
@pytest.mark.timeout(900)
def test_preempted_train_requeues_and_ends_as_an_uninterrupted_run(tiny_pipeline_data, tmp_path):
    steps = ["train.max_steps=100", "train.n_critic=1"]
    args = parse_args(["train", "--partition", "cpu", "--time", "01:30:00", "--run-dir", str(tmp_path / "slurm"),
                       *data_args(tiny_pipeline_data), *TINY_TRAIN, *steps])
    (job,), _ = launch(args)
    log = lambda: "\n".join(p.read_text() for p in Path(job.paths.folder).glob("*_log.out"))
    deadline = time.monotonic() + 300
    while "training hinge" not in log():
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.5)
    time.sleep(1.0)
    job._interrupt()
    interrupted = time.monotonic()
    (results,) = wait_for([job], timeout_s=600)
    print(f"requeue round trip: {time.monotonic() - interrupted:.1f} s from interrupt to result")
    text = log()
    assert "stop requested" in text and "requeues so far: 1" in text
    resumed_at = int(re.search(r"resumed from .* at step (\d+)", text).group(1))
    assert 0 < resumed_at < 100
    assert results[0]["status"] == "completed" and results[0]["step"] == 100

    torch.set_num_threads(2)  # as the job's two CPUs
    cfg = TrainConfig(clips=str(tiny_pipeline_data["clips"]), features=str(tiny_pipeline_data["features"]),
                      out=str(tmp_path / "plain"), ngf=8, ndf=8, batch_size=8, log_every=1, sample_every=1000,
                      hist_every=100000, ckpt_every=1000, max_steps=100, n_critic=1)
    assert run(cfg)["weights_sha256"] == results[0]["weights_sha256"]
    events = EventAccumulator(str(tmp_path / "slurm" / "train" / "tb" / "launch"))
    events.Reload()
    assert [e.value for e in events.Scalars("launch/requeues")] == [1.0]


@pytest.mark.slurm
def test_chain_runs_in_dependency_order_and_a_second_launch_skips_it(tiny_pipeline_data, tmp_path):
    data = tiny_pipeline_data
    common = ["--partition", "cpu", "--time", "00:30:00", "--run-dir", str(tmp_path), f"clips={data['clips']}",
              f"images={data['images']}", "finetune.epochs=1", "finetune.train_layers=head", "features.actors=1",
              "features.figure=false", "pretrain.ngf=8", "pretrain.ndf=8", "pretrain.batch_size=8",
              "pretrain.objective=wgan-gp", "pretrain.max_steps=3", *TINY_TRAIN, "train.max_steps=3",
              "evaluate.k=2", "evaluate.classifier_steps=20", "evaluate.regressor_steps=20"]
    jobs, _ = launch(parse_args(common))
    assert len(jobs) == 5
    results = wait_for(jobs, timeout_s=900)
    assert results[3][0]["status"] == "completed"
    assert (tmp_path / "eval" / "results.json").exists()
    warm = (tmp_path / "train" / "warm_start.json").read_text()
    assert "pretrain" in warm  # train started from the pretrained unconditional WGAN
    out = hpc_launch(*common)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("skip (same config)") == 5 and "nothing to do" in out.stdout

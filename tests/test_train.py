"""The training loop on tiny generated data sets: objectives, exact resume, checkpoints, TensorBoard, DDP."""

import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from his.config import ConfigError, save_config
from his.train import (
    NonFiniteLoss, PretrainConfig, TrainConfig, latest_checkpoint, load_checkpoint, run, save_checkpoint,
)

CLASSES = ("PlayingCello", "PlayingDhol", "PlayingSitar")
D = 12
FEATURE_SHA256 = "0123456789ab" * 5 + "0123"  # stands for the SoundNet checkpoint's sha256
FEATURE_KEY = FEATURE_SHA256[:12]  # CLIPS/features/<first 12 hex of the SoundNet checkpoint sha256>/


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_clips(datasets, root: Path | None) -> Path:
    """A clip set (6 groups of 2 clips per class, the last group of each the test split) and its feature set
    (his.data.small_sets.DataSets): frames and features depend on the class."""
    root = datasets.clips(root, CLASSES, groups_per_class=6, clips_per_group=2, test_groups=1, window_s=0.1)
    datasets.features(root, dim=D, sha256=FEATURE_SHA256)
    return root


@pytest.fixture(scope="module")
def clips(datasets) -> Path:
    return make_clips(datasets, None)


def tiny(clips: Path, out: Path, **kw) -> TrainConfig:
    base = dict(clips=str(clips), features=str(clips / "features" / FEATURE_KEY), cond_dim=D, out=str(out), ngf=8, ndf=8,
                proj_dim=8, z_dim=8, batch_size=8, max_steps=3, warmup_gen_steps=1, warmup_critic_steps=3,
                n_critic=2, log_every=1, sample_every=2, hist_every=2, ckpt_every=100)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("objective,frames", [("gan-cls", "frame64"), ("wgan", "frame88"), ("wgan-gp", "frame88"),
                                              ("hinge", "frame88")])
def test_each_objective_trains_with_finite_losses(clips, tmp_path, objective, frames):
    summary = run(tiny(clips, tmp_path / objective, objective=objective, frames=frames))
    assert summary["status"] == "completed" and summary["step"] == 3
    assert summary["final"] and all(np.isfinite(v) for v in summary["final"].values())
    wanted = {"gan-cls": {"s_r", "s_w", "s_f", "d_loss"}, "wgan": {"critic_wrong", "wasserstein"},
              "wgan-gp": {"gradient_penalty", "critic_wrong", "wasserstein"},
              "hinge": {"d_real", "d_fake", "d_wrong", "critic_loss"}}[objective]
    assert wanted | {"g_loss"} <= set(summary["final"])
    assert (tmp_path / objective / "config.toml").is_file()
    assert (tmp_path / objective / "samples" / "latest.png").is_file()


def test_options_channels_last_and_bf16_run(clips, tmp_path):
    summary = run(tiny(clips, tmp_path, channels_last=True, bf16=True, max_steps=2, spectral_norm=True))
    assert all(np.isfinite(v) for v in summary["final"].values())


def _same_state(a, b, path=""):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _same_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _same_state(x, y, f"{path}/{i}")
    else:
        assert a == b, path


MODERN = dict(objective="hinge", diffaugment="color,translation,cutout", ema_decay=0.9)
RETRIEVAL = dict(objective="hinge", generator="retrieval", neighbours=3, l1_weight=10.0, ema_decay=0.9)


@pytest.mark.parametrize("options", [dict(objective="gan-cls"), dict(objective="wgan"), dict(objective="wgan-gp"), MODERN,
                                     RETRIEVAL, dict(RETRIEVAL, heard_class=True, edit=True)],
                         ids=["gan-cls", "wgan", "wgan-gp", "hinge-diffaugment-ema", "retrieval-l1", "retrieval-edit-heard"])
def test_resume_is_exact(clips, tmp_path, options):
    kw = dict(frames="frame88", max_steps=5, **options)
    whole = run(tiny(clips, tmp_path / "whole", **kw))
    calls = iter(range(100))
    halted = run(tiny(clips, tmp_path / "split", **kw), should_stop=lambda: next(calls) >= 1)
    assert halted["status"] == "interrupted" and halted["step"] == 2
    resumed = run(tiny(clips, tmp_path / "split", **kw))
    assert resumed["status"] == "completed" and resumed["step"] == 5
    assert resumed["weights_sha256"] == whole["weights_sha256"]
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "step-00000005.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "step-00000005.pt")
    assert a.keys() == b.keys()
    for key in ("generator", "critic", "opt_generator", "opt_critic", "step", "epoch", "position", "generator_ema"):
        if key in a:
            _same_state(a[key], b[key], key)


def test_signal_checkpoints_and_returns_interrupted(clips, tmp_path):
    def send_usr1_once(state={"sent": False}):
        if not state["sent"]:
            state["sent"] = True
            os.kill(os.getpid(), signal.SIGUSR1)
        return False

    before = signal.getsignal(signal.SIGUSR1)
    summary = run(tiny(clips, tmp_path, max_steps=10), should_stop=send_usr1_once)
    assert summary["status"] == "interrupted" and summary["step"] in (1, 2)
    assert Path(summary["checkpoint"]).is_file()
    assert signal.getsignal(signal.SIGUSR1) is before


_TORN_WRITER = """
import os, sys, torch
from pathlib import Path
import his.train.checkpoint as t
def write_half_then_die(self, data):  # the checkpoint's bytes reach the disk through Path.write_bytes (his.io)
    with open(self, "wb") as f:
        f.write(bytes(data)[: len(data) // 2])
    os._exit(9)  # killed mid-write
Path.write_bytes = write_half_then_die
t.save_checkpoint(Path(sys.argv[1]), 7, {"step": 7, "x": torch.zeros(1000)}, keep=3)
"""


def test_torn_checkpoint_is_never_loaded(tmp_path):
    save_checkpoint(tmp_path, 3, {"step": 3, "x": torch.ones(3)}, keep=3)
    proc = subprocess.run([sys.executable, "-c", _TORN_WRITER, str(tmp_path)], capture_output=True)
    assert proc.returncode == 9
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*.pt")) == ["step-00000003.pt"]
    # a torn file under a final name (e.g. a copy cut short) is passed over as well
    (tmp_path / "checkpoints" / "step-00000009.pt").write_bytes(b"PK\x03\x04 torn")
    path, ckpt = latest_checkpoint(tmp_path)
    assert path.name == "step-00000003.pt" and ckpt["step"] == 3


def test_non_finite_loss_stops_naming_step_and_term(clips, tmp_path, monkeypatch):
    import his.train.loop as t

    calls = {"n": 0}
    real_loss = t.generator_loss

    def nan_at_third(*args):
        calls["n"] += 1
        loss, terms = real_loss(*args)
        if calls["n"] == 3:
            loss = loss * float("nan")
            terms = {"g_loss": loss.detach()}
        return loss, terms

    monkeypatch.setattr(t, "generator_loss", nan_at_third)
    with pytest.raises(NonFiniteLoss, match=r"step 3: g_loss; last good checkpoint: .*step-00000002\.pt"):
        run(tiny(clips, tmp_path, max_steps=5, ckpt_every=2))
    assert [p.name for p in (tmp_path / "checkpoints").glob("*.pt")] == ["step-00000002.pt"]


def test_config_errors_name_the_field_before_training(clips, tmp_path):
    with pytest.raises(ConfigError, match="objective='lsgan'"):
        run(tiny(clips, tmp_path / "a", objective="lsgan"))
    with pytest.raises(ConfigError, match="cond_dim=1024"):
        run(tiny(clips, tmp_path / "b", cond_dim=1024))
    with pytest.raises(ConfigError, match="critic_norm='batch'"):
        run(tiny(clips, tmp_path / "c", objective="wgan-gp", critic_norm="batch"))
    with pytest.raises(ConfigError, match="clips="):
        run(tiny(tmp_path / "missing", tmp_path / "d"))
    with pytest.raises(ConfigError, match=r"features=.*: no index\.h5 there"):
        run(tiny(clips, tmp_path / "e", features=str(clips / "features")))
    with pytest.raises(ConfigError, match="lr_scaling='cubic' must be none | linear | sqrt"):
        run(tiny(clips, tmp_path / "f", lr_scaling="cubic"))
    assert not any((tmp_path / x).exists() for x in "abcdef")


def test_cli_takes_a_config_file_then_overrides_and_says_its_status_on_stdout(clips, tmp_path, capsys):
    from his.train.__main__ import main

    save_config(tiny(clips, tmp_path / "run", max_steps=5), tmp_path / "cfg.toml")
    assert main(["train", str(tmp_path / "cfg.toml"), "max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"his\.train\.loop: training hinge \(conditional\) on \w+, 1 rank\(s\)", out)
    assert '"status": "completed", "step": 2' in out
    assert main([str(tmp_path / "cfg.toml"), "max_steps=3"]) == 0  # "train" is the default stage
    assert re.search(r"his\.train\.loop: resumed from .*step-00000002\.pt at step 2", capsys.readouterr().out)


def test_cli_help_lists_every_field_and_a_bad_argument_is_one_line_and_exit_2(capsys):
    from his.train.__main__ import main

    for argv, cls in ((["--help"], TrainConfig), (["pretrain", "-h"], PretrainConfig)):
        with pytest.raises(SystemExit) as e:
            main(argv)
        out = capsys.readouterr().out
        assert e.value.code == 0 and "python -m his.train [train|pretrain]" in out and f"{cls.__name__} keys" in out
        for f in dataclasses.fields(cls):
            assert f"\n  {f.name}: {f.type} = " in out, f.name
    assert "  max_steps: int = 0 " in out and "generator steps; 0 = run `epochs`" in out  # type, default, comment
    for argv, named in ((["max_steps=abc"], "max_steps"), (["pretrain", "nosuch=1"], "nosuch"),
                        (["prtrain"], "prtrain"), (["missing.toml"], "missing.toml"), (["bf16"], "bf16")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and named in err, (argv, err)


def test_tensorboard_events_hold_scalars_and_sample_images(clips, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run(tiny(clips, tmp_path, objective="wgan-gp", max_steps=4))
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    for tag in ("loss/critic_real", "loss/critic_fake", "loss/critic_wrong", "loss/gradient_penalty",
                "loss/wasserstein", "loss/g_loss", "lr", "grad_norm/critic", "grad_norm/generator",
                "perf/images_per_s", "perf/data_wait_fraction"):
        assert tag in scalars, tag
    assert [e.step for e in acc.Scalars("loss/wasserstein")] == [1, 2, 3, 4]
    images = acc.Images("samples")
    assert images and images[-1].width == 17 * 66 + 2  # 16 noises + the ground-truth frame per sound
    assert any(tag.startswith("generator/") for tag in acc.Tags()["histograms"])


_RESNET_SOUND_NORMS = {f"blocks.{b}.norm{n}.{w}.weight" for b in range(4) for n in (1, 2) for w in ("gain", "shift")}
WARM_STARTS = {  # objective: the tensors of (generator, critic) that start fresh, the input layer and the sound path
    "wgan": ({"project.linear.weight", "project.linear.bias", "up1.0.weight"},
             {"project.linear.weight", "project.linear.bias", "joint.0.weight"}),
    "hinge": ({"project.linear.weight", "project.linear.bias", "input.weight", *_RESNET_SOUND_NORMS},
              {"embed.parametrizations.weight.original", "embed.parametrizations.weight.0._u",
               "embed.parametrizations.weight.0._v"}),
}


@pytest.mark.parametrize("objective", WARM_STARTS)
def test_pretrain_then_warm_start_loads_exactly_the_matching_tensors(clips, datasets, tmp_path, objective):
    images = datasets.images(tmp_path / "images", n=24)
    pre = run(PretrainConfig(images=str(images), out=str(tmp_path / "pre"), objective=objective, ngf=8, ndf=8,
                             z_dim=8, batch_size=8, max_steps=2, warmup_gen_steps=0, n_critic=1, log_every=1))
    assert pre["status"] == "completed"
    out = tmp_path / "warm"
    run(tiny(clips, out, objective=objective, max_steps=0, epochs=0, init_from=pre["checkpoint"]))
    import json

    report = json.loads((out / "warm_start.json").read_text())
    fresh_g, fresh_d = WARM_STARTS[objective]
    assert set(report["generator"]["fresh"]) == fresh_g
    assert set(report["critic"]["fresh"]) == fresh_d
    pretrained = load_checkpoint(pre["checkpoint"])
    warm = load_checkpoint(next((out / "checkpoints").glob("*.pt")))
    for name, fresh in (("generator", fresh_g), ("critic", fresh_d)):
        assert set(report[name]["loaded"]) == set(warm[name]) - fresh
        for k in report[name]["loaded"]:
            assert torch.equal(warm[name][k], pretrained[name][k]), k


# ----------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, clips: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from his.losses import critic_loss
    from his.models import Critic

    dist.init_process_group("gloo")
    # WGAN-GP critic gradients: rank r takes half r of a batch of 2B
    torch.manual_seed(0)
    critic = Critic(cond_dim=6, ndf=8, proj_dim=4, norm="layer")
    real, fake, cond, wrong, eps = _gp_batch()
    half = slice(rank * 4, rank * 4 + 4)
    ddp = DistributedDataParallel(critic)
    loss, _ = critic_loss("wgan-gp", ddp, real[half], fake[half], cond[half], wrong[half], alpha=0.25,
                          gp_critic=ddp, gp_eps=eps[half])
    loss.backward()
    torch.save({k: p.grad for k, p in critic.named_parameters()}, Path(out) / f"grads{rank}.pt")
    dist.barrier()
    # the loop under DDP (it uses the process group set up here)
    cfg = tiny(Path(clips), Path(out) / "run", objective="wgan-gp", max_steps=3, batch_size=4)
    summary = run(cfg)
    (Path(out) / f"digest{rank}").write_text(summary["weights_sha256"])
    # one epoch of the hinge objective (spectral norm, no buffer broadcasts): a global batch, then a per-rank one
    for name, batch in (("global", dict(global_batch_size=8)), ("per_rank", dict(batch_size=8))):
        summary = run(tiny(Path(clips), Path(out) / name, objective="hinge", max_steps=0, epochs=1, **batch))
        (Path(out) / f"{name}{rank}").write_text(f"{summary['step']} {summary['global_batch']} {summary['weights_sha256']}")
    dist.destroy_process_group()


def _gp_batch():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(8, 3, 64, 64, generator=g), torch.randn(8, 3, 64, 64, generator=g),
            torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g), torch.rand(8, 1, 1, 1, generator=g))


def test_ddp_two_ranks_match_one_process(clips, tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(clips), str(tmp_path)), nprocs=2, join=True)
    # identical weights on both ranks after training
    assert (tmp_path / "digest0").read_text() == (tmp_path / "digest1").read_text()
    # a global batch makes as many updates per epoch on 2 ranks as on one; a per-rank batch makes half
    one = run(tiny(clips, tmp_path / "one", objective="hinge", max_steps=0, epochs=1, batch_size=8))
    for name, steps, global_batch in (("global", one["step"], 8), ("per_rank", one["step"] // 2, 16)):
        ranks = [(tmp_path / f"{name}{r}").read_text().split() for r in (0, 1)]
        assert ranks[0] == ranks[1], name  # same steps and identical weights on both ranks
        assert (int(ranks[0][0]), int(ranks[0][1])) == (steps, global_batch), name
    # gradients of the penalised critic loss over 2 ranks x B == one process with 2B
    from his.losses import critic_loss
    from his.models import Critic

    torch.manual_seed(0)
    critic = Critic(cond_dim=6, ndf=8, proj_dim=4, norm="layer")
    real, fake, cond, wrong, eps = _gp_batch()
    loss, _ = critic_loss("wgan-gp", critic, real, fake, cond, wrong, alpha=0.25, gp_eps=eps)
    loss.backward()
    for rank in (0, 1):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        for k, p in critic.named_parameters():
            # float sums in another order: tolerance relative to the layer's gradient scale
            torch.testing.assert_close(grads[k], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()), msg=k)


# --------------------------------------------------------------------------------- the package's pieces


def test_training_imports_nothing_of_evaluation_and_the_report_not_the_evaluation():
    import ast

    code = "import sys, his.train.loop, his.train.validation; print(sorted(m for m in sys.modules if m.startswith('his.eval')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    report = Path(__file__).parents[1] / "his" / "eval" / "report.py"
    imported = {node.module for node in ast.walk(ast.parse(report.read_text())) if isinstance(node, ast.ImportFrom)}
    assert "his.eval.evaluate" not in imported  # the page reads EvalData from his.eval.data, not from its caller


def test_evaluation_and_generation_import_only_config_and_checkpoint():
    code = ("import sys, his.eval, his.generate; "
            "print(sorted(m for m in sys.modules if m.startswith('his.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['his.train', 'his.train.checkpoint', 'his.train.config']"


def test_lr_halves_every_n_epochs_and_stays_constant_with_zero():
    from his.train.config import resolve
    from his.train.loop import learning_rate

    cfg = resolve(TrainConfig(lr=1e-3, lr_halve_every=100))
    assert [learning_rate(cfg, e) for e in (0, 99, 100, 199, 250)] == [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4]
    assert learning_rate(resolve(TrainConfig(lr=1e-3, lr_halve_every=0)), 10_000) == 1e-3
    for scaling, factor in (("none", 1.0), ("linear", 4.0), ("sqrt", 2.0)):  # global batch 256 = 4 x lr_base_batch
        cfg = resolve(TrainConfig(lr=1e-3, lr_halve_every=100, lr_scaling=scaling, lr_base_batch=64))
        assert learning_rate(cfg, 100, global_batch=256) == pytest.approx(5e-4 * factor)


def test_wrong_sounds_are_uniform_over_the_other_classes():
    from his.train.data import WrongSounds

    labels = np.array([0, 0, 0, 1, 2, 2])  # unsorted classes of unequal size must not matter
    labels = labels[[3, 0, 4, 1, 5, 2]]
    wrong = WrongSounds(labels)
    rng = torch.Generator().manual_seed(0)
    for own in (0, 1, 2):
        drawn = wrong.draw(torch.full((6000,), own), rng).numpy()
        assert (labels[drawn] != own).all()
        others = np.flatnonzero(labels != own)
        counts = np.bincount(drawn, minlength=len(labels))[others]
        assert counts.min() > 0.8 * 6000 / len(others)  # every row of another class, about equally often


def test_other_clip_wrong_sounds_are_any_other_clip_of_any_class():
    from his.train.data import WrongSounds

    labels = np.array([1, 0, 1, 2, 0, 1])
    wrong = WrongSounds(np.arange(len(labels)))  # what wrong_sounds=other-clip builds
    rng = torch.Generator().manual_seed(0)
    rows = np.repeat(np.arange(len(labels)), 3000)
    drawn = wrong.for_rows(rows, rng)
    assert (drawn != rows).all()
    assert (labels[drawn] == labels[rows]).mean() > 0.2  # clips of the own class are negatives too
    counts = np.bincount(drawn[rows == 0], minlength=len(labels))[1:]
    assert counts.min() > 0.8 * 3000 / 5
    # the report's: only other classes, drawn for rows through the rows' labels
    assert (labels[WrongSounds(labels).for_rows(rows, rng)] != labels[rows]).all()


def test_critic_labels_give_the_critic_each_rows_class_and_the_generator_only_the_sound():
    from his.train.data import TrainingData, WrongSounds, make_batch

    labels = np.array([0, 1, 2, 0, 1, 2])
    cond = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    data = TrainingData(np.zeros((6, 64, 64, 3), np.uint8), cond, labels, n_classes=3).with_critic_labels()
    rng = torch.Generator().manual_seed(0)
    rows = np.array([0, 2, 4])
    _, g_cond, critic_cond, wrong_cond = make_batch(data, rows, WrongSounds(labels), rng, torch.device("cpu"),
                                                    flip=False, channels_last=False)
    torch.testing.assert_close(g_cond, torch.from_numpy(cond[rows]))  # what G hears: the sound alone
    torch.testing.assert_close(critic_cond[:, :4], g_cond)
    assert critic_cond[:, 4:].argmax(1).tolist() == labels[rows].tolist() and (critic_cond[:, 4:].sum(1) == 1).all()
    # a wrong row comes with its own class: the sound and the class of another clip, never the image's
    wrong_rows = [int(np.flatnonzero((cond == w[:4].numpy()).all(1))[0]) for w in wrong_cond]
    assert wrong_cond[:, 4:].argmax(1).tolist() == labels[wrong_rows].tolist()
    assert (labels[wrong_rows] != labels[rows]).all()


def test_critic_labels_train_a_class_embedding_warm_started_like_the_rest(clips, tmp_path):
    summary = run(tiny(clips, tmp_path / "labels", objective="hinge", critic_labels=True))
    assert summary["status"] == "completed" and np.isfinite(summary["final"]["d_wrong"])
    critic = load_checkpoint(summary["checkpoint"])["critic"]
    # one embedding row per class of the clip set, beside the sound's embedding
    assert critic["class_embed.parametrizations.weight.original"].shape == (8 * 8, len(CLASSES))
    assert critic["embed.parametrizations.weight.original"].shape == (8 * 8, D)
    with pytest.raises(ConfigError, match="critic_labels=True must be false unless critic=projection"):
        run(tiny(clips, tmp_path / "concat", objective="wgan-gp", critic_labels=True))


def test_checkpoint_rotation_keeps_the_newest(tmp_path):
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000004.pt", "step-00000005.pt"]
    path, ckpt = latest_checkpoint(tmp_path)
    assert path.name == "step-00000005.pt" and ckpt["step"] == 5


def test_batches_resume_at_epoch_and_position():
    from his.train.data import Batches

    whole = Batches(20, 4, world=1, rank=0, seed=3)
    seen = [next(whole) for _ in range(12)]  # 5 batches an epoch: crosses two epoch boundaries
    resumed = Batches(20, 4, world=1, rank=0, seed=3, epoch=1, position=2)
    assert all(np.array_equal(a, next(resumed)) for a in seen[7:])
    assert sorted(np.concatenate(seen[:5]).tolist()) == list(range(20))  # an epoch sees every row once


def test_compile_trains_like_eager(clips, tmp_path):
    eager = run(tiny(clips, tmp_path / "eager", objective="gan-cls", max_steps=2))
    compiled = run(tiny(clips, tmp_path / "compiled", objective="gan-cls", max_steps=2, compile=True))
    a = load_checkpoint(Path(eager["checkpoint"]))["generator"]
    b = load_checkpoint(Path(compiled["checkpoint"]))["generator"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)


def test_ema_is_the_moving_average_of_the_generator_steps(clips, tmp_path):
    """Runs are deterministic, so the k-step run's generator is step k's: EMA_1 = G_1, EMA_k = d EMA_k-1 + (1-d) G_k
    with the warm-up d = min(decay, (1 + n) / (10 + n)) after n updates."""
    decay = 0.15
    kw = dict(MODERN, ema_decay=decay)
    gens = [load_checkpoint(Path(run(tiny(clips, tmp_path / str(k), max_steps=k, **kw))["checkpoint"])) for k in (1, 2, 3)]
    from his.train.checkpoint import sampling_weights

    expected = {k: v.clone() for k, v in gens[0]["generator"].items()}
    for n, ckpt in enumerate(gens[1:], start=1):
        d = min(decay, (1 + n) / (10 + n))  # 0.15 then 0.15: the warm-up (2/11 = 0.18, 3/12 = 0.25) is above it
        for k, v in ckpt["generator"].items():
            if v.is_floating_point():
                expected[k] = d * expected[k] + (1 - d) * v
    for k, v in sampling_weights(gens[2]).items():
        if v.is_floating_point():
            torch.testing.assert_close(v, expected[k], rtol=1e-5, atol=1e-6, msg=k)
    assert sampling_weights(gens[2]) is gens[2]["generator_ema"]
    assert not torch.equal(gens[2]["generator_ema"]["to_rgb.weight"], gens[2]["generator"]["to_rgb.weight"])


def test_bad_modern_options_are_named_before_any_work(clips, tmp_path):
    with pytest.raises(ConfigError, match="diffaugment='zoom'"):
        run(tiny(clips, tmp_path, diffaugment="zoom"))
    with pytest.raises(ConfigError, match="ema_decay=1.5"):
        run(tiny(clips, tmp_path, ema_decay=1.5))
    with pytest.raises(ConfigError, match="critic='resnet'"):
        run(tiny(clips, tmp_path, critic="resnet"))


def test_validation_curve_and_best_checkpoint_use_held_out_training_groups(clips, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from his.train.checkpoint import chosen_checkpoint
    from his.train.data import load_clips

    cfg = tiny(clips, tmp_path, max_steps=5, val_fraction=0.2, val_every=2, val_classifier_steps=100)
    data = load_clips(cfg)
    with h5py.File(clips / "index.h5") as f:
        train_groups = f["group"][f["split"][()] == 0]
    assert len(data.frames) + len(data.validation.labels) == len(train_groups)  # val rows are not trained on
    assert len(data.frames) < len(train_groups) and len(data.validation.labels) > 0

    summary = run(cfg)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    curve = [(e.step, e.value) for e in events.Scalars("val/conditional_accuracy")]
    assert [s for s, _ in curve] == [2, 4, 5] and all(0 <= v <= 1 for _, v in curve)
    best_step, best_acc = max(curve, key=lambda sv: (sv[1], sv[0]))  # the last of the best
    assert summary["best"]["step"] == best_step and summary["best"]["val_accuracy"] == pytest.approx(best_acc)
    assert [e.value for e in events.Scalars("val/ceiling")] == [pytest.approx(summary["val_ceiling"])]
    assert summary["val_ceiling"] > 0.9  # frames of a colour per class: real validation frames are easy
    path, ckpt = chosen_checkpoint(tmp_path)
    assert path.name == "best.pt" and ckpt["step"] == best_step

    # evaluation reads with the very classifier validation fitted: one fit per data set, not two
    from his.eval.stage import EvalConfig, run as evaluate

    fitted = {p: p.stat().st_mtime_ns for p in (clips / "eval-cache").glob("classifier-*.pt")}
    summary = evaluate(EvalConfig(run=str(tmp_path), k=2, classifier_steps=100, regressor_steps=10))
    results = json.loads(Path(summary["results"]).read_text())
    assert Path(results["classifier"]["cache"]) in fitted
    for baseline in ("retrieval_baseline", "retrieval_baseline_heard_class"):  # the stage's summary names both
        assert summary[f"{baseline}_conditional_accuracy"] == results[baseline]["overall"]["conditional_accuracy"]
    assert {p: p.stat().st_mtime_ns for p in (clips / "eval-cache").glob("classifier-*.pt")} == fitted


def test_validation_needs_video_groups(datasets, tmp_path):
    clips = make_clips(datasets, tmp_path / "clips")
    with h5py.File(clips / "index.h5", "a") as f:
        del f["group"]
    with pytest.raises(ConfigError, match="val_fraction=0.2 needs the clips' video groups"):
        run(tiny(clips, tmp_path / "run", val_fraction=0.2))


def test_ema_warm_up_follows_the_generator_early():
    from his.train.loop import ema_with_warmup

    averaged, current = [torch.zeros(3)], [torch.ones(3)]
    ema_with_warmup(0.999)(averaged, current, torch.tensor(1))  # after one update the decay is 2/11, not 0.999
    torch.testing.assert_close(averaged[0], torch.full((3,), 9 / 11))
    averaged = [torch.zeros(3)]
    ema_with_warmup(0.999)(averaged, current, torch.tensor(100_000))
    torch.testing.assert_close(averaged[0], torch.full((3,), 0.001))


@pytest.mark.parametrize("field,value", [("max_steps", -5), ("epochs", -1), ("log_every", 0),
                                         ("ckpt_every", 0), ("sample_every", 0), ("hist_every", 0), ("ngf", 0),
                                         ("batch_size", 0), ("keep_checkpoints", 0), ("val_every", 0),
                                         ("val_classifier_steps", 0), ("wrong_sounds", "other-video"), ("critic_pool", "max"), ("generator", "big")])
def test_out_of_range_fields_are_named_before_any_work(tmp_path, field, value):
    from his.train.config import resolve

    with pytest.raises(ConfigError, match=rf"config: {field}={value!r} must be"):
        resolve(TrainConfig(out=str(tmp_path / "run"), **{field: value}))
    assert not (tmp_path / "run").exists()


def test_an_unreadable_newer_checkpoint_never_costs_the_good_ones(clips, tmp_path):
    """keep_checkpoints=1 and a torn step-9 beside a good step-2: the resumed run keeps what it writes."""
    kw = dict(max_steps=2, keep_checkpoints=1)
    run(tiny(clips, tmp_path, **kw))
    (tmp_path / "checkpoints" / "step-00000009.pt").write_bytes(b"PK\x03\x04 torn")
    summary = run(tiny(clips, tmp_path, **{**kw, "max_steps": 4}))
    assert summary["step"] == 4 and Path(summary["checkpoint"]).is_file()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000004.pt", "step-00000009.pt.unreadable"]
    path, ckpt = latest_checkpoint(tmp_path)
    assert path.name == "step-00000004.pt" and ckpt["step"] == 4


def test_a_retrieval_generator_draws_from_other_players_frames_and_its_checkpoint_carries_them(clips, tmp_path):
    from his.eval.stage import load_run_generator
    from his.frames import centre_crop
    from his.models import RetrievalGenerator

    summary = run(tiny(clips, tmp_path / "run", frames="frame88", **RETRIEVAL))
    assert summary["status"] == "completed" and np.isfinite(summary["final"]["l1"])
    cfg, _, _, generator = load_run_generator(tmp_path / "run", "", torch.device("cpu"))
    assert isinstance(generator, RetrievalGenerator) and cfg.neighbours == 3
    with h5py.File(clips / "index.h5") as f:
        train = f["split"][()] == 0
        frames64 = centre_crop(f["frame88"][()][train])  # the gallery: the train frames as training shows them
        groups = f["group"][()][train]
    gallery = ((generator.gallery_images.float() + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(gallery, frames64, atol=1.0)  # float16 holds a uint8 frame to within a level
    np.testing.assert_array_equal(generator.gallery_groups.numpy(), groups)
    # a row's own group is never among its neighbours; without exclusion the nearest is the row itself
    cond = generator.gallery_features[:4]
    for z0 in (-3.0, 0.0, 3.0):  # z_0 picks which of the 3 nearest
        z = torch.zeros(4, generator.z_dim)
        z[:, 0] = z0
        rows = generator.neighbour_rows(cond, z, exclude_groups=generator.gallery_groups[:4])
        assert (generator.gallery_groups[rows] != generator.gallery_groups[:4]).all()
    z = torch.zeros(4, generator.z_dim)
    z[:, 0] = -5.0
    assert generator.neighbour_rows(cond, z).tolist() == [0, 1, 2, 3]


def test_an_editing_heard_class_retrieval_run_keeps_its_reader_and_labels_in_the_checkpoint(clips, tmp_path):
    from his.eval.stage import load_run_generator

    summary = run(tiny(clips, tmp_path / "run", heard_class=True, edit=True, **RETRIEVAL))
    assert summary["status"] == "completed"
    cfg, _, _, generator = load_run_generator(tmp_path / "run", "", torch.device("cpu"))
    assert generator.edit and generator.heard_class
    with h5py.File(clips / "index.h5") as f:
        labels = f["label"][()][f["split"][()] == 0]
    np.testing.assert_array_equal(generator.gallery_labels.numpy(), labels)
    # the reader hears the training sounds' classes (it was fitted on them), and every neighbour is of that class
    heard = generator.heard(generator.gallery_features)
    assert (heard.numpy() == labels).mean() > 0.9
    rows = generator.neighbour_rows(generator.gallery_features, torch.randn(len(labels), cfg.z_dim))
    assert torch.equal(generator.gallery_labels[rows], heard)
    for option in ("heard_class", "edit"):
        with pytest.raises(ConfigError, match=f"{option}=True must be false unless generator=retrieval"):
            run(tiny(clips, tmp_path / option, objective="hinge", **{option: True}))


def test_the_l1_term_is_the_mean_absolute_difference_to_the_sounds_own_frame(clips, tmp_path, monkeypatch):
    import his.train.loop as loop

    seen = {}
    original = loop.generator_loss

    def spy(objective, critic, fake, cond):
        seen["fake"] = fake.detach().clone()
        return original(objective, critic, fake, cond)

    monkeypatch.setattr(loop, "generator_loss", spy)
    real_batches = []
    original_batch = loop.make_batch
    monkeypatch.setattr(loop, "make_batch", lambda *a, **k: real_batches.append(original_batch(*a, **k)) or real_batches[-1])
    summary = run(tiny(clips, tmp_path / "run", max_steps=1, n_critic=1, l1_weight=2.0, log_every=1))
    real = real_batches[-1][0]
    assert summary["final"]["l1"] == pytest.approx(float((seen["fake"] - real).abs().mean()), rel=1e-5)
    assert summary["final"]["g_loss"] != pytest.approx(summary["final"]["l1"])  # the adversarial term is apart


def test_the_class_head_terms_are_the_cross_entropy_of_the_critics_auxiliary_classifier(clips, tmp_path, monkeypatch):
    import torch.nn.functional as F

    import his.train.loop as loop

    seen = []
    original = F.cross_entropy

    def spy(logits, labels):
        value = original(logits, labels)
        seen.append((logits.detach(), labels, value.detach()))
        return value

    monkeypatch.setattr(loop.F, "cross_entropy", spy)
    summary = run(tiny(clips, tmp_path / "run", objective="hinge", max_steps=1, n_critic=1, class_weight=1.0))
    (logits_real, labels, real_value), (logits_fake, labels_fake, fake_value) = seen
    assert logits_real.shape == (8, len(CLASSES)) and torch.equal(labels, labels_fake)
    assert summary["final"]["class_real"] == pytest.approx(float(real_value))
    assert summary["final"]["class_fake"] == pytest.approx(float(fake_value))
    assert float(real_value) == pytest.approx(float(-torch.log_softmax(logits_real, 1)[torch.arange(8), labels].mean()))


def test_the_contrastive_terms_are_infonce_between_the_critics_image_features_and_sound_embeddings(clips, tmp_path,
                                                                                                     monkeypatch):
    import torch.nn.functional as F

    import his.train.loop as loop

    seen = []
    original = loop.infonce

    def spy(a, b, temperature, labels=None):
        value = original(a, b, temperature, labels)
        seen.append((a.detach(), b.detach(), value.detach()))
        return value

    monkeypatch.setattr(loop, "infonce", spy)
    summary = run(tiny(clips, tmp_path / "run", objective="hinge", max_steps=1, n_critic=1, diffaugment="",
                       contrastive_weight=1.0, infonce_temperature=0.2))
    (image_real, sound_real, real_value), (image_fake, sound_fake, fake_value) = seen
    assert summary["final"]["contrastive_real"] == pytest.approx(float(real_value))
    assert summary["final"]["contrastive_fake"] == pytest.approx(float(fake_value))
    for unit in (image_real, sound_real, image_fake, sound_fake):
        assert unit.shape == (8, 8 * 8) and torch.allclose(unit.norm(dim=1), torch.ones(8), atol=1e-5)
    logits = image_real @ sound_real.T / 0.2
    labels = torch.arange(8)
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    assert float(real_value) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ConfigError, match="contrastive_weight=1.0 must be 0 unless critic=projection"):
        run(tiny(clips, tmp_path / "concat", objective="wgan-gp", contrastive_weight=1.0))

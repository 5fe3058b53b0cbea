"""The two-stage method on tiny generated data: stage one (pretrain generator=instance), stage two (the
sound -> embedding head, his.train.align), each loss against its definition, resume, and the launcher's checks."""

import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from his.config import ConfigError
from his.models import InstanceGenerator, TwoStageGenerator
from his.train import PretrainConfig, load_checkpoint, run
from his.losses import infonce
from his.train.align import alignment_loss
from his.train.checkpoint import sampling_weights
from his.train.loop import instance_batch
from tests.test_train import make_clips, tiny

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clips(datasets):
    return make_clips(datasets, None)


@pytest.fixture(scope="module")
def stage_one(clips, datasets, tmp_path_factory):
    """A stage-one run: the instance-conditioned GAN on the images and the clips' training frames."""
    root = tmp_path_factory.mktemp("stage-one")
    images = datasets.images(root / "images", n=16)
    summary = run(PretrainConfig(images=str(images), clips=str(clips), out=str(root / "run"), objective="hinge",
                                 generator="instance", ngf=8, ndf=8, z_dim=8, proj_dim=8, embed_dim=16, batch_size=8,
                                 max_steps=3, neighbours=2, l1_weight=10, log_every=1, sample_every=2))
    return summary


def two_stage(clips, out, stage_one, **kw):
    return tiny(clips, out, generator="two-stage", init_from=stage_one["checkpoint"], embed_dim=16, **kw)


def test_infonce_is_the_mean_of_both_directions_cross_entropies():
    g = torch.Generator().manual_seed(0)
    pred = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    target = torch.nn.functional.normalize(torch.randn(5, 4, generator=g), dim=1)
    t = 0.1
    sim = pred @ target.T / t
    by_sound = -(sim.diag() - torch.logsumexp(sim, dim=1)).mean()  # each sound picks its own frame out of the batch
    by_frame = -(sim.diag() - torch.logsumexp(sim, dim=0)).mean()  # each frame its own sound
    assert float(infonce(pred, target, t)) == pytest.approx(float(by_sound + by_frame) / 2, rel=1e-6)
    assert float(infonce(pred, target, t, torch.arange(5))) == pytest.approx(float(infonce(pred, target, t)), rel=1e-6)
    labels = torch.tensor([0, 0, 1, 1, 2])  # supervised contrastive: a class's rows are all positives
    same = labels[:, None] == labels[None, :]
    one_way = lambda s: -(s.masked_fill(~same, float("-inf")).logsumexp(1) - s.logsumexp(1)).mean()  # noqa: E731
    assert float(infonce(pred, target, t, labels)) == pytest.approx(float(one_way(sim) + one_way(sim.T)) / 2, rel=1e-6)
    # perfectly aligned, well separated pairs cost almost nothing; the same pairs shuffled cost much more
    eye = torch.eye(5, 4 + 1)[:, :4]
    eye[4] = torch.nn.functional.normalize(torch.ones(4), dim=0)
    assert float(infonce(eye, eye, 0.01)) < float(infonce(eye, eye.roll(1, 0), 0.01)) - 10


def test_alignment_loss_is_the_squared_distance_plus_weighted_infonce():
    g = torch.Generator().manual_seed(1)
    pred = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=1)
    target = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=1)
    loss, terms = alignment_loss(pred, target, infonce_weight=0.5, temperature=0.2)
    squared = ((pred - target) ** 2).sum(1).mean()
    assert float(terms["regression"]) == pytest.approx(float(squared), rel=1e-6)
    assert float(terms["regression"]) == pytest.approx(float((2 - 2 * (pred * target).sum(1)).mean()), rel=1e-5)
    assert float(loss) == pytest.approx(float(squared + 0.5 * infonce(pred, target, 0.2)), rel=1e-6)
    assert float(alignment_loss(target, target, 1.0, 0.2)[1]["batch_r1"]) == 1.0


def test_instance_pairs_give_the_critic_a_neighbour_of_each_image_by_its_embedding():
    torch.manual_seed(0)
    generator = InstanceGenerator(z_dim=4, ngf=4, proj_dim=4, embed_dim=16).eval()
    real = torch.rand(10, 3, 64, 64) * 2 - 1
    rng = torch.Generator().manual_seed(0)
    cond, h, alone = instance_batch(generator, real, 1, rng)
    assert cond is real and torch.equal(alone, real)  # a neighbourhood of one: the image itself
    assert torch.allclose(h.norm(dim=1), torch.ones(10), atol=1e-5) and not h.requires_grad
    _, h, paired = instance_batch(generator, real, 3, rng)
    nearest = torch.cdist(h, h).topk(3, dim=1, largest=False).indices
    for i in range(10):
        assert any(torch.equal(paired[i], real[j]) for j in nearest[i])


def test_stage_one_draws_from_images_and_clip_frames_and_evaluation_refuses_it(clips, stage_one):
    from pathlib import Path

    from his.eval.stage import load_run_generator

    assert stage_one["status"] == "completed"
    assert np.isfinite(stage_one["final"]["l1"]) and np.isfinite(stage_one["final"]["infonce"])
    ckpt = load_checkpoint(stage_one["checkpoint"])
    assert ckpt["conditional"] is False and any(k.startswith("encoder.") for k in ckpt["generator"])
    assert ckpt["critic"]["embed.parametrizations.weight.original"].shape[1] == 16  # D reads the image embedding
    with pytest.raises(ConfigError, match="draws no images from a sound"):
        load_run_generator(Path(stage_one["run_dir"]), "", torch.device("cpu"))


def test_stage_two_loss_goes_down_the_decoder_is_stage_ones_and_evaluation_reads_it(clips, stage_one, tmp_path):
    import json
    from pathlib import Path

    from his.eval.stage import EvalConfig, load_run_generator, run as evaluate

    out = tmp_path / "align"
    summary = run(two_stage(clips, out, stage_one, max_steps=60, head_lr=3e-3, log_every=1, ckpt_every=30,
                            val_fraction=0.2, val_every=20, val_classifier_steps=100))
    assert summary["status"] == "completed" and summary["step"] == 60
    events = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0}).Reload()
    for term in ("regression", "infonce"):
        curve = [e.value for e in events.Scalars(f"loss/{term}")]
        # the first is the untrained head's; frames of one class look alike here, so InfoNCE's floor is high
        assert len(curve) == 60 and np.mean(curve[-5:]) < 0.8 * curve[0], (term, curve)
    assert [e.step for e in events.Scalars("val/conditional_accuracy")] == [20, 40, 60]
    _, path, _, generator = load_run_generator(out, "", torch.device("cpu"))
    assert isinstance(generator, TwoStageGenerator) and path.name == "best.pt"
    decoder = {k.removeprefix("decoder."): v for k, v in sampling_weights(load_checkpoint(stage_one["checkpoint"])).items()
               if k.startswith("decoder.")}
    for k, v in generator.decoder.state_dict().items():
        assert torch.equal(v, decoder[k]), k  # stage one's drawing, untouched
    results = evaluate(EvalConfig(run=str(out), k=2, classifier_steps=100, regressor_steps=10))
    assert 0 <= json.loads(Path(results["results"]).read_text())["overall"]["conditional_accuracy"] <= 1


def test_stage_two_resumes_exactly(clips, stage_one, tmp_path):
    whole = run(two_stage(clips, tmp_path / "whole", stage_one, max_steps=8))
    calls = iter(range(100))
    first = run(two_stage(clips, tmp_path / "split", stage_one, max_steps=8), should_stop=lambda: next(calls) == 4)
    assert first["status"] == "interrupted" and first["step"] == 5
    rest = run(two_stage(clips, tmp_path / "split", stage_one, max_steps=8))
    assert rest["status"] == "completed" and rest["weights_sha256"] == whole["weights_sha256"]


def test_two_stage_config_errors_are_one_line_before_any_work(clips, stage_one, datasets, tmp_path):
    with pytest.raises(ConfigError, match="generator=two-stage needs init_from="):
        run(tiny(clips, tmp_path / "a", generator="two-stage"))
    plain = run(tiny(clips, tmp_path / "plain", max_steps=1))
    with pytest.raises(ConfigError, match="was trained with generator='resnet'"):
        run(tiny(clips, tmp_path / "b", generator="two-stage", init_from=plain["checkpoint"], objective="hinge"))
    with pytest.raises(ConfigError, match="was built otherwise: embed_dim=16 there, 128 here"):
        run(tiny(clips, tmp_path / "c", generator="two-stage", init_from=stage_one["checkpoint"]))
    with pytest.raises(ConfigError, match="generator='instance' must be another generator for a sound-conditioned run"):
        run(tiny(clips, tmp_path / "d", generator="instance"))
    with pytest.raises(ConfigError, match="clips=.* must be empty unless generator=instance"):
        run(PretrainConfig(images=str(datasets.images(tmp_path / "images", n=8)), clips=str(clips),
                           out=str(tmp_path / "e")))


def test_the_launcher_runs_both_halves_or_neither():
    from hpc.stages import LaunchError, PipelineConfig, check_two_stage, pretrain_at_start

    base = PipelineConfig(clips="/data/clips", images="/data/images")
    stage_one = dataclasses.replace(base.pretrain, generator="instance")
    both = dataclasses.replace(base, pretrain=stage_one, train=dataclasses.replace(base.train, generator="two-stage"))
    check_two_stage(both)
    assert pretrain_at_start(both).clips == "/data/clips"  # stage one draws from the clips' frames too
    assert pretrain_at_start(base).clips == ""  # the report's pretraining stays on the images alone
    with pytest.raises(LaunchError, match="pretrain: generator=instance is stage one"):
        check_two_stage(dataclasses.replace(both, train=base.train))
    with pytest.raises(LaunchError, match="train: generator=two-stage draws with stage one"):
        check_two_stage(dataclasses.replace(both, images=""))

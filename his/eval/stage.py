"""The `evaluate` stage: evaluate a his.train run directory.

    python -m his.eval [CONFIG.toml] run=RUN_DIR [key=value ...]      (or a bare RUN_DIR for run=RUN_DIR)

evaluates the run's checkpoint chosen on validation (checkpoints/best.pt), else its newest (or `checkpoint=`),
with the config it was trained with (the checkpoint's own; RUN_DIR/config.toml for one that carries none): loads
the run's clip set and SoundNet features, draws K samples per held-out test sound (and K from the sound of a test
clip of another class: the shuffled-sound control) and writes RUN_DIR/eval/ (results.json, results.md,
figure7.png, figure8.png, and report.html: each test sound to play beside the images drawn from it, opened from
disk). The overall numbers and the figures also go to the run's TensorBoard log (RUN_DIR/tb) at the
checkpoint's step, with the run's HParams session (its config; the eval/ numbers as metrics). The evaluation
networks are cached beside the clip set (CLIPS/eval-cache/), keyed by its data. Attribute following uses the
generated data set's attributes.json when one is found above the source videos (or `attributes=`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from his.augment import parse_policy
from his.config import ConfigError, config_to_dict, load_config, save_config, stage_main
from his.data.dataset import load_features, load_rows, load_split, read_classes
from his.distributed import choose_device
from his.eval.data import EvalData, EvalSettings
from his.eval.evaluate import evaluate, generate_shuffled
from his.eval.report import RETRIEVAL_BASELINES
from his.frame_classifier import CLASSIFIER_TRAINING, NetTraining
from his.frames import centre_crop
from his.models import build_generator
from his.train.checkpoint import chosen_checkpoint, load_checkpoint, sampling_weights
from his.sampling import generate_samples
from his.train.config import TrainConfig

log = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    run: str = ""  # a his.train run directory
    checkpoint: str = ""  # default: the run's newest readable checkpoint
    out: str = ""  # default: RUN/eval
    tb: str = ""  # TensorBoard log directory; default: the run's, RUN/tb
    k: int = 16  # samples per held-out sound
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 256
    cache: str = ""  # evaluation networks; default: CLIPS/eval-cache
    attributes: str = ""  # attributes.json of a his.synth data set; default: found above the source videos
    attribute_names: list[str] = field(default_factory=lambda: ["pitch_register", "loudness", "tempo_bpm"])
    classifier_steps: int = CLASSIFIER_TRAINING.steps
    classifier_width: int = CLASSIFIER_TRAINING.width
    classifier_augment: str = CLASSIFIER_TRAINING.augment  # a his.augment policy; "" for flip and shift only
    regressor_steps: int = 400
    figure8_class: str = ""  # default: the first class


def _find_attributes(cfg: EvalConfig, index: Path, sources: np.ndarray) -> Path | None:
    if cfg.attributes:
        path = Path(cfg.attributes)
        if not path.is_file():
            raise ConfigError(f"config: attributes={cfg.attributes!r}: no such file")
        return path
    if len(sources) == 0:
        return None
    source = Path(sources[0])
    source = source if source.is_absolute() else index.parent / source
    return next((p / "attributes.json" for p in source.parents if (p / "attributes.json").is_file()), None)


def _attribute_columns(path: Path, video_ids: np.ndarray, names: list[str]) -> dict[str, np.ndarray] | None:
    """Per-row values of each named clip attribute, joined on the video's file name (a folders layout's ids are
    "class/name"); None if a row has none."""
    records = {Path(r["video"]).stem: r for r in json.loads(path.read_text())["clips"]}
    stems = [Path(str(v)).stem for v in video_ids]
    if not all(v in records for v in stems):
        return None
    present = [name for name in names if name in records[stems[0]]]
    return {name: np.array([float(records[v][name]) for v in stems]) for name in present}


def load_eval_data(train_cfg: TrainConfig, cfg: EvalConfig) -> EvalData:
    """The run's clip set as EvalData: train and test frames (64x64), labels, test features, attributes."""
    clips = Path(train_cfg.clips)
    index = clips / "index.h5" if clips.is_dir() else clips
    with h5py.File(index, "r") as f:
        # video_id and source are in the contract; hand-made clip sets may lack them (no attributes, then)
        optional = [name for name in ("video_id", "source") if name in f]
    fields = [train_cfg.frames, "label", *optional]
    train, test = load_split(index, "train", fields), load_split(index, "test", fields)
    if len(test["label"]) == 0:
        raise ConfigError(f"config: the clip set {index} has no test clips to evaluate on")
    data = EvalData(
        classes=read_classes(index),
        train_frames=centre_crop(train[train_cfg.frames]),
        train_labels=train["label"].astype(np.int64),
        test_frames=centre_crop(test[train_cfg.frames]),
        test_labels=test["label"].astype(np.int64),
        test_features=load_features(train_cfg.features, "test"),
        train_features=load_features(train_cfg.features, "train"),
        test_video_ids=test.get("video_id"),
        test_audio=load_rows(index, "test", "audio"),  # not with load_split: that reads every clip's audio
    )
    attributes = _find_attributes(cfg, index, train.get("source", np.array([])))
    if attributes is None:
        return data
    if "video_id" not in train:
        raise ConfigError(f"config: attributes={str(attributes)!r}: the clip set {index} has no video_id to join on")
    data.train_attributes = _attribute_columns(attributes, train["video_id"], cfg.attribute_names)
    data.test_attributes = _attribute_columns(attributes, test["video_id"], cfg.attribute_names)
    if data.train_attributes is None or data.test_attributes is None:
        log.warning(f"{attributes} does not list every clip of {index}; no attribute following")
    return data


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A his.train checkpoint file's contents; ConfigError (one line naming it) for a missing, truncated or
    foreign file."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint file")
    try:
        state = load_checkpoint(path)
    except Exception as e:  # torch.load fails in many ways on a file that is not a whole checkpoint
        raise ConfigError(f"{path}: not a readable checkpoint (truncated, or not a torch file: "
                          f"{type(e).__name__})") from None
    if not isinstance(state, dict) or "generator" not in state:
        raise ConfigError(f"{path}: not a his.train checkpoint (no generator weights in it)")
    return state


def trained_config(state: dict[str, Any], path: Path, run_dir: Path) -> TrainConfig:
    """The TrainConfig the checkpoint at `path` was trained with: the one it carries, else RUN_DIR/config.toml."""
    if state.get("conditional") is False:
        raise ConfigError(f"{path}: an unconditional (pretrain) checkpoint: it draws no images from a sound")
    if "config" not in state:
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"{path}: carries no config, and {run_dir} has no config.toml")
        return load_config(TrainConfig, run_dir / "config.toml")
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), state["config"]))
    except OmegaConfBaseException as e:
        raise ConfigError(f"{path}: its config is not a his.train TrainConfig ({str(e).splitlines()[0]})") from None


def load_run_generator(run_dir: Path, checkpoint: str,
                       device: torch.device) -> tuple[TrainConfig, Path, dict[str, Any], torch.nn.Module]:
    """A his.train run's config, checkpoint path and contents, and its generator in eval mode on `device`:
    from the checkpoint file `checkpoint` when given, else the run's best on validation (checkpoints/best.pt,
    when it validated) or its newest readable checkpoint. The test split never chooses the checkpoint. The
    generator is built from the checkpoint's own config, so a checkpoint of any width loads; a file it cannot
    use is a ConfigError, one line."""
    if checkpoint:
        checkpoint_path = Path(checkpoint)
        state = read_checkpoint(checkpoint_path)
    else:
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(f"config: run={str(run_dir)!r}: no config.toml there (not a his.train run directory)")
        found = chosen_checkpoint(run_dir)
        if found is None:
            raise ConfigError(f"config: run={str(run_dir)!r}: no readable checkpoint in {run_dir / 'checkpoints'}")
        checkpoint_path, state = found
    train_cfg = trained_config(state, checkpoint_path, run_dir)
    generator = build_generator(train_cfg.generator, train_cfg.cond_dim, train_cfg.z_dim, train_cfg.ngf,
                                train_cfg.proj_dim, train_cfg.neighbours, train_cfg.embed_dim,
                                train_cfg.heard_class, train_cfg.edit)
    try:
        generator.load_state_dict(sampling_weights(state))
    except (RuntimeError, KeyError) as e:
        # the first mismatch, as "size mismatch for up1.0.weight" or "Missing key(s) in state_dict: ..."
        detail = ([line.strip() for line in str(e).splitlines()[1:2]] or [str(e)])[0].split(": copying")[0][:160]
        raise ConfigError(f"{checkpoint_path}: its generator weights do not fit the config it was read with "
                          f"(ngf={train_cfg.ngf}, z_dim={train_cfg.z_dim}, ...): {detail}") from None
    return train_cfg, checkpoint_path, state, generator.to(device).eval()


def run(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate the run's checkpoint; returns the overall numbers and the paths written."""
    try:
        parse_policy(cfg.classifier_augment)
    except ValueError as e:
        raise ConfigError(f"config: classifier_augment: {e}") from None
    run_dir = Path(cfg.run)
    device = choose_device(cfg.device)
    train_cfg, checkpoint_path, checkpoint, generator = load_run_generator(run_dir, cfg.checkpoint, device)

    data = load_eval_data(train_cfg, cfg)
    generate = lambda features, z: generator(z, features)
    samples = generate_samples(generate, data.test_features, cfg.k, train_cfg.z_dim, cfg.seed, cfg.batch_size, device)
    shuffled = generate_shuffled(generate, data.test_features, data.test_labels, cfg.k, train_cfg.z_dim, cfg.seed,
                                 cfg.batch_size, device)
    clips = Path(train_cfg.clips)
    settings = EvalSettings(
        classifier=NetTraining(steps=cfg.classifier_steps, width=cfg.classifier_width, seed=cfg.seed,
                               augment=cfg.classifier_augment),
        regressor=NetTraining(steps=cfg.regressor_steps, seed=cfg.seed),
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        figure8_class=cfg.figure8_class or None,
    )
    out = Path(cfg.out) if cfg.out else run_dir / "eval"
    cache = Path(cfg.cache) if cfg.cache else (clips if clips.is_dir() else clips.parent) / "eval-cache"
    log_dir = Path(cfg.tb) if cfg.tb else run_dir / "tb"
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.toml")  # what made these results (hpc.launch reruns the stage when it changes)
    results = evaluate(data, samples, out, settings, cache, log_dir, checkpoint["step"], device, shuffled,
                       hparams=config_to_dict(train_cfg))
    return {
        "checkpoint": str(checkpoint_path),
        "step": checkpoint["step"],
        "results": str(out / "results.json"),
        "table": str(out / "results.md"),
        "figures": results["figures"],
        "report": results["report"],
        **results["overall"],
        **{f"{baseline}_{k}": v for baseline in RETRIEVAL_BASELINES
           for k, v in results.get(baseline, {}).get("overall", {}).items()
           if k in ("conditional_accuracy", "shuffled_accuracy")},
    }


def _show(summary: dict[str, Any]) -> None:
    print(Path(summary["table"]).read_text())
    print(json.dumps({k: summary[k] for k in ("checkpoint", "results", "figures", "report")}, indent=2))


def main(argv: list[str] | None = None) -> int:
    return stage_main(EvalConfig, run, argv, prog="his.eval", doc=__doc__, positional="run", show=_show)

"""The pipeline's stages as one table, and how one run directory joins them: what each stage reads, where it
writes, and how to tell that it is done. hpc.launch submits them; hpc.plan decides which to skip, resume or run.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py

import his.audio.finetune
import his.eval.stage
import his.train
import hpc.features
import hpc.preprocess
from his.audio.features import locate_features
from his.audio.finetune import FinetuneConfig
from his.data.feature_sets import is_complete
from his.eval.stage import EvalConfig
from his.train import PretrainConfig, TrainConfig, latest_checkpoint
from his.train.config import RESUMABLE, resolve
from hpc.features import PoolFeaturesConfig
from hpc.preprocess import PreprocessConfig


class LaunchError(RuntimeError):
    """A request that cannot be submitted; one line, said before anything is submitted."""


@dataclass
class PipelineConfig:
    clips: str = "demo/clips"  # clip data set (hpc.preprocess output, holds index.h5)
    images: str = ""  # image set for unconditional pretraining (his.data.images); "" skips pretrain
    videos: str = ""  # videos (preprocess.layout: ucf101, csv, folders): set to make `clips` first, with Ray
    splits: str = ""  # the split lists (trainlist0N.txt, testlist0N.txt) of `videos` in the ucf101 layout
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    features: PoolFeaturesConfig = field(default_factory=PoolFeaturesConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


# The data sets of PipelineConfig (directories), what to say when one is unset, and the file in it that a stage
# reading it needs ("" for the directory itself).
DATA_SETS = {
    "clips": "clip set (set clips=DIR, made by python -m hpc.preprocess or the preprocess stage)",
    "images": "image set (set images=DIR, made by python -m his.data.images)",
    "videos": "videos (set videos=DIR, in the layout preprocess.layout= names)",
    "splits": "split lists (set splits=DIR, holding trainlist0N.txt and testlist0N.txt)",
}
DATA_SET_MARKER = {"clips": "index.h5", "images": "index.h5", "videos": "", "splits": ""}


@dataclass(frozen=True)
class Input:
    """A path a stage reads: from a data set (`source` one of DATA_SETS) or from the stage `source`, either
    its file `output` or, without one, its out dir (then all of that stage's outputs must be there)."""

    field: str  # of the stage's config; "" when the stage finds it on its own (evaluate: clips via the train run)
    source: str
    output: str = ""
    at_start: bool = False  # where it is, is known only once `source` has run: the stage finds it as it starts
    required: bool = True  # False: taken when there (a warm start), never checked


@dataclass(frozen=True)
class Stage:
    """One row of the stage table.

    name     also the PipelineConfig field that holds the stage's config
    run      the stage itself: its config -> a summary dict
    layout   "ddp": a rank per GPU (per CPU slot) on every node; "ray": one task per node, Ray across them
             (hpc.ray_cluster), the stage the Ray driver on the first;
             "task": one task with one GPU
    inputs   the paths it reads
    out      its config's `out`, under the run dir; "" when it writes elsewhere
    outputs  files under `out` that say it is done (a summary.json must also say completed)
    done     the done check instead of `outputs`
    at_start its config completed with the inputs found as it starts
    makes    the data set the stage writes (its config's `out` is that data set), "" for none
    check    its config's own checks, made before anything is submitted
    resolve  the stage's own resolution of its config (defaults it fills in), as its saved config.toml holds it
    ignored  fields that say how the stage runs, not what it makes: a change in them alone never reruns it
    resumable  the fields a resumed stage may change (empty: the stage does not resume, it starts over)
    on_change  when its config changed in another field: "refuse" for a stage whose outputs later stages
             build on (they would mix two configs), "rerun" for one that is cheap to redo
    """

    name: str
    run: Callable[[Any], dict]
    layout: Literal["ddp", "ray", "task"]
    inputs: tuple[Input, ...]
    out: str = ""
    outputs: tuple[str, ...] = ()
    done: Callable[[PipelineConfig], bool] | None = None
    at_start: Callable[[PipelineConfig], Any] | None = None
    makes: str = ""
    check: Callable[[Any], None] | None = None
    resolve: Callable[[Any], Any] | None = None
    ignored: frozenset[str] = frozenset({"device"})
    resumable: frozenset[str] = frozenset()
    on_change: Literal["refuse", "rerun"] = "refuse"

    def config(self, cfg: PipelineConfig) -> Any:
        return getattr(cfg, self.name)


def features_dir(cfg: PipelineConfig) -> Path | None:
    """Where the features of this run's fine-tuned SoundNet are (None until it exists)."""
    if not Path(cfg.features.checkpoint).exists():
        return None
    try:
        return locate_features(cfg.features)[0]
    except (OSError, RuntimeError, KeyError, pickle.UnpicklingError) as e:  # torch.load's ways to refuse a file
        why = e.strerror if isinstance(e, OSError) and e.strerror else f"not a checkpoint torch can load ({type(e).__name__})"
        raise LaunchError(f"features: {cfg.features.checkpoint}: {why}") from None


def features_done(cfg: PipelineConfig) -> bool:
    found = features_dir(cfg)
    if found is None:
        return False
    with h5py.File(Path(cfg.clips) / "index.h5", "r") as f:
        rows = len(f["label"])
    return is_complete(found, rows)


def train_at_start(cfg: PipelineConfig) -> TrainConfig:
    train = cfg.train
    if not train.features:
        found = features_dir(cfg)
        if found is None:
            raise LaunchError(f"train: no features yet (expected the checkpoint {cfg.features.checkpoint})")
        train = dataclasses.replace(train, features=str(found))
    if not train.init_from and cfg.images:
        latest = latest_checkpoint(cfg.pretrain.out)
        if latest is not None:
            train = dataclasses.replace(train, init_from=str(latest[0]))
    return train


def pretrain_at_start(cfg: PipelineConfig) -> PretrainConfig:
    """Stage one of the two-stage method (generator=instance) draws from the clips' training frames too."""
    pretrain = cfg.pretrain
    if pretrain.generator == "instance" and not pretrain.clips:
        pretrain = dataclasses.replace(pretrain, clips=cfg.clips)
    return pretrain


def check_two_stage(cfg: PipelineConfig) -> None:
    """The two-stage method is both halves or neither: pretrain generator=instance (stage one, on images= and the
    clips' frames) and train generator=two-stage (stage two, warm-started from it)."""
    instance, two_stage = cfg.pretrain.generator == "instance", cfg.train.generator == "two-stage"
    if two_stage and not cfg.train.init_from and not (cfg.images and instance):
        raise LaunchError("train: generator=two-stage draws with stage one: set images= and pretrain.generator=instance "
                          "(or train.init_from= a stage-one checkpoint)")
    if instance and cfg.images and not two_stage:
        raise LaunchError("pretrain: generator=instance is stage one of the two-stage method: set "
                          "train.generator=two-stage too")


FINETUNED = "soundnet_finetuned.pt"

# In chain order: every stage comes after the stages it reads from.
STAGE_TABLE: tuple[Stage, ...] = (
    Stage("preprocess", hpc.preprocess.run, "ray",  # writes the clip set, CLIPS/
          inputs=(Input("videos", "videos"), Input("splits", "splits", required=False)),  # ucf101's: check_config
          outputs=("index.h5", "report.json"), makes="clips", check=hpc.preprocess.check_config,
          ignored=frozenset({"address", "num_cpus", "timeout_s", "strict"})),
    Stage("finetune", his.audio.finetune.run, "ddp",
          inputs=(Input("data", "clips"),),
          out="soundnet", outputs=("summary.json", FINETUNED)),
    Stage("features", hpc.features.run, "ray",  # writes CLIPS/features/<checkpoint sha>[-<layer>]
          inputs=(Input("data", "clips"), Input("checkpoint", "finetune", FINETUNED)),
          done=features_done),
    Stage("pretrain", his.train.run, "ddp",
          inputs=(Input("images", "images"),),
          out="pretrain", outputs=("summary.json",), at_start=pretrain_at_start, resolve=resolve, resumable=RESUMABLE),
    Stage("train", his.train.run, "ddp",
          inputs=(Input("clips", "clips"), Input("features", "features", at_start=True),
                  Input("init_from", "pretrain", at_start=True, required=False)),
          out="train", outputs=("summary.json",), at_start=train_at_start, resolve=resolve, resumable=RESUMABLE),
    Stage("evaluate", his.eval.stage.run, "task",
          inputs=(Input("", "clips"), Input("run", "train")),
          out="eval", outputs=("results.json",), on_change="rerun"),
)
STAGES = tuple(s.name for s in STAGE_TABLE)
ROW = {s.name: s for s in STAGE_TABLE}


def wire(cfg: PipelineConfig, run_dir: Path) -> PipelineConfig:
    """Set every path that joins two stages from the run directory and the data sets."""
    run_dir = run_dir.resolve()
    cfg = dataclasses.replace(cfg, **{name: str(Path(getattr(cfg, name)).resolve()) if getattr(cfg, name) else ""
                                      for name in DATA_SETS})
    stages = {}
    for row in STAGE_TABLE:
        paths = {"out": str(run_dir / row.out)} if row.out else {}
        if row.makes:
            paths["out"] = getattr(cfg, row.makes)
        for i in row.inputs:
            if i.field and not i.at_start:
                paths[i.field] = (getattr(cfg, i.source) if i.source in DATA_SETS
                                  else str(run_dir / ROW[i.source].out / i.output))
        stages[row.name] = dataclasses.replace(row.config(cfg), **paths)
    return dataclasses.replace(cfg, **stages)


def resolve_at_start(stage: str, cfg: PipelineConfig, resolved: bool = False) -> Any:
    """The stage's own config, with what is only known once the stages before it have run; `resolved`: also
    with the defaults the stage fills in itself, as it saves its config."""
    row = ROW[stage]
    stage_cfg = row.at_start(cfg) if row.at_start else row.config(cfg)
    return row.resolve(stage_cfg) if resolved and row.resolve else stage_cfg


def _summary_completed(path: Path) -> bool:
    try:
        return json.loads(path.read_text()).get("status", "completed") == "completed"
    except (OSError, ValueError):
        return False


def stage_done(stage: str, cfg: PipelineConfig) -> bool:
    """Whether the stage's outputs exist and are valid, so a chain can skip it."""
    row = ROW[stage]
    if row.done:
        return row.done(cfg)
    out = Path(row.config(cfg).out)
    return all(_summary_completed(out / name) if name == "summary.json" else (out / name).exists()
               for name in row.outputs)


def _needs(row: Stage, cfg: PipelineConfig) -> Iterator[tuple[str, Path | None]]:
    """(where it comes from: a data set, a stage, or "" when the user named it; the path that must exist, None
    for an unset data set) for each input the stage needs before it starts."""
    stage_cfg = row.config(cfg)
    for i in row.inputs:
        if not i.required:
            continue
        given = getattr(stage_cfg, i.field) if i.field else ""
        if i.source in DATA_SETS:
            data = getattr(cfg, i.source)
            yield i.source, Path(data) / DATA_SET_MARKER[i.source] if data else None
        elif i.at_start and given:
            yield "", Path(given)
        elif i.at_start:
            yield from _needs(ROW[i.source], cfg)  # its place follows from those (features: the checkpoint's hash)
        else:
            for name in [""] if i.output else ROW[i.source].outputs:
                yield i.source, Path(given) / name


def full_chain(cfg: PipelineConfig) -> list[str]:
    """The stages a launch without STAGE runs: all but those that read an unset data set (no images: no pretrain)."""
    return [s.name for s in STAGE_TABLE
            if all(getattr(cfg, i.source) for i in s.inputs if i.source in DATA_SETS and i.required)]


def stage_inputs_missing(stage: str, cfg: PipelineConfig, chain: list[str]) -> str | None:
    """What the stage needs that neither exists nor is made earlier in this chain, as one line, or None."""
    before = chain[: chain.index(stage)]
    made_before = {ROW[s].makes for s in before if ROW[s].makes} | set(before)
    for source, path in _needs(ROW[stage], cfg):
        if path is None:
            return f"{stage}: no {DATA_SETS[source]}"
        if not path.exists() and source not in made_before:
            maker = source if source in ROW else next((r.name for r in STAGE_TABLE if source and r.makes == source), "")
            hint = f" (made by stage {maker})" if maker else ""
            return f"{stage}: missing input {path}{hint}"
    return None

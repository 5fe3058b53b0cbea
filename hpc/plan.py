"""What a launch does with each stage of its chain, and why: skip it, resume it, run it, or refuse.

A stage is skipped only when its outputs are complete and were made by the config asked for now: every stage
with an out dir writes its resolved config there as config.toml, and the features stage keys its directory by
the checkpoint's sha256 and the layer. Otherwise the stage runs into the same run directory, resuming where it
can; a change that would leave its outputs made by two configs at once (another width, objective or seed for
a stage whose outputs later stages read) is refused in one line, before anything is submitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from his.config import ConfigError, config_changes, config_to_dict, describe_changes, load_config
from hpc.stages import ROW, LaunchError, PipelineConfig, features_dir, resolve_at_start, stage_done

Action = Literal["skip", "resume", "run"]


@dataclass(frozen=True)
class StagePlan:
    stage: str
    action: Action
    why: str

    def line(self) -> str:
        word = "skip (same config)" if self.action == "skip" else self.action
        return f"{self.stage}: {word}: {self.why}"


def plan_chain(cfg: PipelineConfig, chain: list[str]) -> list[StagePlan]:
    """The plan of every stage of `chain`, in order; raises LaunchError for a change it refuses."""
    plans: list[StagePlan] = []
    for stage in chain:
        upstream = next((p.stage for p in reversed(plans) if p.action != "skip"), None)
        plans.append(plan_stage(stage, cfg, upstream))
    return plans


def plan_stage(stage: str, cfg: PipelineConfig, upstream: str | None = None) -> StagePlan:
    """What to do with `stage`; `upstream` names a stage before it in the chain that runs first, so what this
    one reads will change (it then runs or resumes, and checks its config again as it starts)."""
    if stage == "features":
        return _plan_features(cfg, upstream)
    row = ROW[stage]
    out = Path(row.config(cfg).out)
    has_state = stage_done(stage, cfg) or any(out.glob("checkpoints/*.pt"))
    resumes = bool(row.resumable)
    if upstream is not None:
        return StagePlan(stage, "resume" if resumes and has_state else "run", f"after {upstream}")
    saved_path = out / "config.toml"
    if not saved_path.is_file():
        return StagePlan(stage, "run", "no outputs yet" if not has_state else f"no config.toml in {out} to compare with")
    wanted = resolve_at_start(stage, cfg, resolved=True)
    try:
        saved = config_to_dict(load_config(type(wanted), saved_path))
    except ConfigError as e:
        changes = {"config.toml": (f"unreadable ({e})", "the config asked for")}
    else:
        changes = {k: v for k, v in config_changes(saved, config_to_dict(wanted)).items() if k not in row.ignored}
    blocking = {k: v for k, v in changes.items() if k not in row.resumable}
    if not changes and stage_done(stage, cfg):
        return StagePlan(stage, "skip", "outputs complete")
    if blocking and has_state and row.on_change == "refuse":
        raise LaunchError(f"{stage}: {out} was made with another config ({describe_changes(blocking)}); "
                          f"set it back, use another --run-dir, or remove {out} to redo the stage")
    if blocking:
        return StagePlan(stage, "run", f"config changed ({describe_changes(blocking)})")
    if resumes and has_state:
        return StagePlan(stage, "resume", describe_changes(changes) if changes else "outputs incomplete")
    return StagePlan(stage, "run", describe_changes(changes) if changes else "outputs incomplete")


def _plan_features(cfg: PipelineConfig, upstream: str | None) -> StagePlan:
    if upstream is not None:
        return StagePlan("features", "run", f"after {upstream}")
    found = features_dir(cfg)
    if found is None:
        return StagePlan("features", "run", "no checkpoint to key them by yet")
    if stage_done("features", cfg):
        return StagePlan("features", "skip", f"{found} holds every clip's features of this checkpoint and layer")
    extracted = len(list(found.glob("raw/*.npy")))
    if extracted:
        return StagePlan("features", "resume", f"{extracted} shard(s) of raw features already in {found}")
    return StagePlan("features", "run", f"no features of this checkpoint and layer yet ({found})")

"""Every recipe on the same budget, on rooms that give the class away and rooms that do not, 3 and 10 classes,
beside the retrieval baseline.

    python -m benchmarks.compare --out compare [--rooms shared,per-class] [--classes 3,10]
        [--variants hinge,hinge-l1-ac,retrieval-g,retrieval-g-l1,...] [--steps 300] [--seed 0] [key=value ...]

For each data set (rooms x classes) `make demo`'s pipeline makes the data, fine-tunes SoundNet, extracts the
features and trains the demo's own recipe for --steps (row "demo"); his.eval scores it and the retrieval baseline
(row "retrieval": for each held-out sound the training frames whose sounds are nearest; row "retrieval, heard
class": the same among the frames of the class a linear probe hears in the sound). Then each variant
trains from scratch with the same widths, batch and generator steps (beyond its objective's defaults, RECIPES:
the report's three objectives with the report's generator and critic; hinge is the previous demo's recipe, the
ResNet generator with DiffAugment and an EMA; hinge-simple-g hinge with the report's generator; hinge-labels hinge
whose critic also projects on the class; hinge-l1-ac hinge with pix2pix's L1 and AC-GAN's class head;
retrieval-g the retrieval-augmented generator alone, retrieval-g-l1 with the L1 term, retrieval-g-l1-edit that
drawing a change to its neighbour frame, -edit-heard with neighbours of the heard class too; two-stage the method after
Sound2Scene, stage one for --steps on the cell's images and training frames, then 500 head updates), and his.eval
scores the checkpoint chosen on validation groups. key=value overrides apply to every variant (its train stage).

Each data set is labelled with its real-frame ceiling and its sound-limited ceiling (real frames of the class a
linear probe hears in the sound: what a generator that hears only the sound can reach).
Columns: conditional accuracy on held-out sounds (and as a fraction of the real-frame and of the sound-limited
ceiling), the shuffled-sound control (images from another class's sound, read as the clip's own class: near 0
when images follow the sound), class R@1, intra-class FID and its real-vs-real reference, the memorisation check
(median distance to the nearest training frame over that of real test frames: below 1 is nearer than new real
frames are), diversity within one sound over the real frames', Spearman within class of loudness and register
(accuracy and Spearmans with their 95% bootstrap intervals over held-out clips), and the wall time until the
validation accuracy first reached 80% / 90% of the validation ceiling (from the TensorBoard curve, "-" if never).
Prints markdown, writes OUT/compare.md and OUT/compare.json; finished runs are skipped on a rerun, so an
interrupted comparison continues.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from his.config import load_config
from his.eval.report import format_interval
from his.eval.stage import EvalConfig, run as evaluate
from his.io import write_json
from his.synth import ALL_CLASSES
from his.train import PretrainConfig, TrainConfig, run as train

ROOT = Path(__file__).resolve().parents[1]
CLASS_SETS = {3: ("PlayingCello", "PlayingDhol", "PlayingSitar"), 10: ALL_CLASSES}
RECIPES = {  # per variant, beyond its objective's OBJECTIVE_DEFAULTS (hinge's: ResNet G, DiffAugment, the EMA)
    "gan-cls": ["objective=gan-cls"], "wgan": ["objective=wgan"], "wgan-gp": ["objective=wgan-gp"],
    "wgan-gp-demo": ["objective=wgan-gp", "n_critic=2", "lr=3e-4"],
    "hinge": ["objective=hinge"], "hinge-simple-g": ["objective=hinge", "generator=simple"],
    "hinge-labels": ["objective=hinge", "critic_labels=true"],
    "hinge-l1-ac": ["objective=hinge", "l1_weight=10", "class_weight=1"],
    "retrieval-g": ["objective=hinge", "generator=retrieval"],
    "retrieval-g-l1": ["objective=hinge", "generator=retrieval", "l1_weight=10"],
    "retrieval-g-l1-edit": ["objective=hinge", "generator=retrieval", "l1_weight=10", "edit=true"],
    "retrieval-g-l1-edit-heard": ["objective=hinge", "generator=retrieval", "l1_weight=10", "edit=true",
                                  "heard_class=true"],
    "two-stage": ["generator=two-stage", "z_dim=32", "max_steps=500"],  # 500 head updates, after STAGE_ONE
}
# The two-stage method's stage one (pretrain generator=instance on the cell's PPMI images and training frames),
# trained for the variant's generator steps before its head; configs/two_stage.toml's recipe.
STAGE_ONE = {"two-stage": ["objective=hinge", "generator=instance", "l1_weight=10", "neighbours=8", "z_dim=32",
                          "infonce_positives=class"]}
GAN_BUDGET = ["ngf=16", "ndf=16", "batch_size=32", "log_every=20", "sample_every=100000", "ckpt_every=200"]
BUDGET = [*GAN_BUDGET, "val_fraction=0.2", "val_every=50"]
COLUMNS = [("conditional_accuracy", "cond. acc."), ("of_ceiling", "of ceiling"), ("of_heard", "of sound-limited"),
           ("shuffled_accuracy", "shuffled"), ("class_r1", "class R@1"), ("intra_fid", "intra-FID"),
           ("intra_fid_real", "intra-FID real"), ("nearest_train_ratio", "nearest train / real"),
           ("diversity_ratio", "diversity / real"),
           ("spearman_loudness", "ρ loudness"), ("spearman_register", "ρ register"),
           ("s_to_80", "s to 80%"), ("s_to_90", "s to 90%"), ("train_s", "train s")]


def newest_features(clips: Path) -> Path:
    found = sorted((clips / "features").glob("*/index.h5"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"compare: no feature set under {clips / 'features'}")
    return found[-1].parent


def time_to(run_dir: Path, fraction: float) -> float | None:
    """Seconds from the start of training until val/conditional_accuracy first reached fraction x val/ceiling."""
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    if "val/ceiling" not in events.Tags()["scalars"]:
        return None
    (ceiling,) = events.Scalars("val/ceiling")[-1:]
    reached = [e for e in events.Scalars("val/conditional_accuracy") if e.value >= fraction * ceiling.value]
    return round(reached[0].wall_time - ceiling.wall_time, 1) if reached else None


def row_of(name: str, run_dir: Path, train_s: float | None) -> list[dict]:
    """The run's row and, first, the retrieval baselines' on the same data (his.eval scores them all)."""
    results = evaluate(EvalConfig(run=str(run_dir)))
    scored = json.loads(Path(results["results"]).read_text())
    rows = [_row(name, scored, results["checkpoint"], train_s, run_dir)]
    if name == "demo":
        baselines = [(row, key) for row, key in (("retrieval", "retrieval_baseline"),
                                                 ("retrieval, heard class", "retrieval_baseline_heard_class"))
                     if key in scored]
        rows[:0] = [_row(row, {"classes": scored["classes"], **scored[key]}, None, None, None) for row, key in baselines]
    return rows


def _row(name: str, scored: dict, checkpoint: str | None, train_s: float | None, run_dir: Path | None) -> dict:
    attributes = scored.get("attributes", {})
    o = scored["overall"]
    row = {"variant": name, "checkpoint": checkpoint, "train_s": train_s,
           "s_to_80": time_to(run_dir, 0.8) if run_dir else None, "s_to_90": time_to(run_dir, 0.9) if run_dir else None,
           **{k: o.get(k) for k in ("conditional_accuracy", "shuffled_accuracy", "class_r1", "intra_fid", "fid",
                                    "intra_fid_real", "nearest_train_ratio", "ceiling_accuracy", "heard_ceiling",
                                    "chance_accuracy")}}
    row["of_ceiling"] = o["conditional_accuracy"] / o["ceiling_accuracy"] if o.get("ceiling_accuracy") else None
    row["of_heard"] = o["conditional_accuracy"] / o["heard_ceiling"] if o.get("heard_ceiling") else None
    row["diversity_ratio"] = o.get("diversity_within_sound")  # already over the real frames' spread, per class
    for attribute in ("loudness", "register"):
        key = next((k for k in attributes if k.startswith(attribute) or k.startswith(f"pitch_{attribute}")), None)
        row[f"spearman_{attribute}"] = attributes[key]["spearman_within_class"] if key else None
        row[f"spearman_{attribute}_95"] = attributes[key].get("spearman_within_class_95") if key else None
    row["conditional_accuracy_95"] = o.get("conditional_accuracy_95")
    return row


def compare_data_set(out: Path, rooms: str, n_classes: int, variants: list[str], steps: int, seed: int,
                     overrides: list[str]) -> list[dict]:
    cell = out / f"{rooms}-{n_classes}"
    started = time.monotonic()
    demo = subprocess.run([sys.executable, "-m", "hpc.demo", "--out", str(cell), "--rooms", rooms,
                           "--classes", ",".join(CLASS_SETS[n_classes]), f"train.seed={seed}",
                           f"train.max_steps={steps}"], cwd=ROOT)
    if demo.returncode != 0:
        sys.exit(f"compare: the demo pipeline for {cell} failed (exit {demo.returncode})")
    demo_summary = json.loads((cell / "run" / "train" / "summary.json").read_text())
    demo_train_s = round(demo_summary["s_per_step"] * demo_summary["step"], 1)  # its training alone, by its meter
    rows = [{**row, "pipeline_s": round(time.monotonic() - started, 1) if row["variant"] == "demo" else None}
            for row in row_of("demo", cell / "run" / "train", demo_train_s)]
    features = newest_features(cell / "clips")
    for variant in variants:
        run_dir = cell / variant
        timing = run_dir / "compare_train_s.json"  # a rerun finds the run complete: keep its first timing
        started = time.monotonic()
        stage_one = []
        if variant in STAGE_ONE:
            scene = load_config(PretrainConfig, None, [f"images={cell / 'images'}", f"clips={cell / 'clips'}",
                                                       f"out={cell / (variant + '-stage-one')}", f"max_steps={steps}",
                                                       f"seed={seed}", *GAN_BUDGET, *STAGE_ONE[variant]])
            stage_one = [f"init_from={train(scene)['checkpoint']}"]  # a finished run only says where it ended
        cfg = load_config(TrainConfig, None, [f"clips={cell / 'clips'}", f"features={features}", f"out={run_dir}",
                                              f"max_steps={steps}", f"seed={seed}", *BUDGET, *RECIPES[variant],
                                              *stage_one, *overrides])
        if not timing.is_file():
            train(cfg)
            write_json(timing, {"train_s": round(time.monotonic() - started, 1)})
        rows += row_of(variant, run_dir, json.loads(timing.read_text())["train_s"])
    for row in rows:
        row.update(rooms=rooms, classes=n_classes)
        print(f"compare: {rooms}-{n_classes} {row['variant']}: {json.dumps(row)}", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    def cell(value) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| data | variant | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append(f"| {row['rooms']} rooms, {row['classes']} classes (ceiling {cell(row['ceiling_accuracy'])}, "
                     f"sound-limited {cell(row.get('heard_ceiling'))}, chance {cell(row['chance_accuracy'])}) | {row['variant']} | "
                     + " | ".join(" ".join(filter(None, (cell(row.get(k)), format_interval(row.get(f"{k}_95"))))) for k, _ in COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--rooms", default="shared,per-class")
    p.add_argument("--classes", default="3,10")
    p.add_argument("--variants", default=",".join(RECIPES))
    p.add_argument("--steps", type=int, default=300, help="generator steps per variant (the demo's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(RECIPES)):
        p.error(f"unknown variant(s) {unknown}; known: {list(RECIPES)}")
    rows = []
    for rooms in args.rooms.split(","):
        for n_classes in (int(n) for n in args.classes.split(",")):
            if n_classes not in CLASS_SETS:
                p.error(f"--classes: {n_classes} is not one of {sorted(CLASS_SETS)}")
            rows += compare_data_set(args.out, rooms, n_classes, variants, args.steps, args.seed, args.overrides)
            text = markdown(rows)
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "compare.md").write_text(text)
            write_json(args.out / "compare.json", {"steps": args.steps, "seed": args.seed, "budget": BUDGET,
                                                   "recipes": RECIPES, "overrides": args.overrides, "rows": rows})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""GAN-CLS vs WGAN (clipping) vs WGAN-GP, each from scratch and warm-started from the unconditional WGAN
pretrained on the PPMI-style images: same data, same generator steps, same widths; then his.eval's numbers.

    python benchmarks/compare.py --clips demo/clips --images demo/images --out demo/compare [--steps 300]
        [key=value ...]      # TrainConfig overrides shared by every variant, e.g. ngf=16 ndf=16

Prints a markdown table, writes OUT/compare.md and OUT/compare.json. Every run lives in OUT/<variant>/ and is
resumed or skipped when it is already there, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from his.config import load_config
from his.eval.stage import EvalConfig, run as evaluate
from his.io import write_json
from his.train import PretrainConfig, TrainConfig, latest_checkpoint, run as train

OBJECTIVES = ("gan-cls", "wgan", "wgan-gp")
COLUMNS = [("conditional_accuracy", "cond. acc."), ("class_r1", "class R@1"), ("intra_fid", "intra-class FID"),
           ("fid", "FID"), ("diversity_within_sound", "diversity (1 sound)"), ("train_s", "train s")]


def newest_features(clips: Path) -> Path:
    found = sorted((clips / "features").glob("*/index.h5"), key=lambda p: p.stat().st_mtime)
    if not found:
        sys.exit(f"compare: no feature set under {clips / 'features'} (run hpc.features or make demo first)")
    return found[-1].parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", required=True, type=Path)
    p.add_argument("--images", required=True, type=Path)
    p.add_argument("--features", type=Path, help="feature set dir (default: the newest under CLIPS/features)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=300, help="generator steps per variant")
    p.add_argument("--pretrain-steps", type=int, default=150)
    p.add_argument("--pretrain-objective", default="wgan", help="the report's unconditional WGAN (clipping)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    features = args.features or newest_features(args.clips)
    common = [f"max_steps={args.steps}", "log_every=20", "sample_every=100000", "ckpt_every=100", *args.overrides]

    pretrain_dir = args.out / "pretrain"
    pretrain_cfg = load_config(PretrainConfig, None, [f"images={args.images}", f"out={pretrain_dir}",
                                                      f"objective={args.pretrain_objective}", f"max_steps={args.pretrain_steps}",
                                                      *[o for o in common if not o.startswith("max_steps=")]])
    train(pretrain_cfg)
    pretrained = str(latest_checkpoint(pretrain_dir)[0])

    rows = []
    for objective in OBJECTIVES:
        for warm in (False, True):
            name = f"{objective}{'-warm' if warm else ''}"
            run_dir = args.out / name
            cfg = load_config(TrainConfig, None, [f"clips={args.clips}", f"features={features}", f"out={run_dir}",
                                                  f"objective={objective}", *common,
                                                  *([f"init_from={pretrained}"] if warm else [])])
            started = time.monotonic()
            summary = train(cfg)
            train_s = time.monotonic() - started
            results = evaluate(EvalConfig(run=str(run_dir)))
            rows.append({"variant": name, "objective": objective, "warm_start": warm, "steps": summary["step"],
                         "train_s": round(train_s, 1), **{k: results[k] for k, _ in COLUMNS if k in results}})
            print(f"compare: {name}: {json.dumps(rows[-1])}", flush=True)

    table = ["| variant | " + " | ".join(title for _, title in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"{row[k]:.3g}" if isinstance(row.get(k), float) else str(row.get(k, "")) for k, _ in COLUMNS]
        table.append(f"| {row['variant']} | " + " | ".join(cells) + " |")
    ceiling = results.get("ceiling_accuracy")
    text = "\n".join(table) + (f"\n\nFrame classifier ceiling (real test frames): {ceiling:.3g}\n" if ceiling else "\n")
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compare.md").write_text(text)
    write_json(args.out / "compare.json", {"steps": args.steps, "overrides": args.overrides, "rows": rows,
                                           "ceiling_accuracy": ceiling})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput: images/s and seconds per generator step for each objective, with the plain fp32
eager loop and with each performance option (channels_last, bf16 autocast, torch.compile), side by side.

    python benchmarks/train.py [--device cuda] [--steps 20] [--batch 64] [--out bench-train.json]

Runs his.train.run on a generated clip set (3 classes, 1024-d features, 88x66 frames), so the numbers include
the real data path (in-memory rows, crops, flips, host-to-device copies). The first step (warm-up, compile)
is not timed. WGAN is measured in its steady state (n_critic critic steps per generator step, no 100-step
warm-up phases). Also prints model FLOPs per image (forward G and D, from layer shapes).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import torch

from his.data.small_sets import DataSets
from his.models import build_critic, build_generator, count_flops_per_image
from his.train import TrainConfig, resolve, run
from his.train.config import OBJECTIVE_DEFAULTS

VARIANTS = {
    "fp32 eager": {},
    "channels_last": {"channels_last": True},
    "bf16": {"bf16": True},
    "compile": {"compile": True},
    "all": {"channels_last": True, "bf16": True, "compile": True},
}


def make_clip_set(root: Path, n: int, dim: int = 1024, classes: int = 3, seed: int = 0) -> tuple[Path, Path]:
    """A clip set of about `n` rows (`classes` classes, 8 clips per group, one test group per class) and its
    `dim`-d feature set, written through the project's writers (manifest included), as readers expect."""
    sets = DataSets(lambda name: Path(tempfile.mkdtemp(prefix=name, dir=root)))
    names = [f"class{c}" for c in range(classes)]
    clips = sets.clips(root / "clips", names, groups_per_class=max(2, n // (classes * 8)), clips_per_group=8,
                       window_s=0.1, shard_clips=256, seed=seed)
    return clips, sets.features(clips, dim=dim, seed=seed)


def flops_per_generator_step(objective: str, batch: int, flops: dict[str, float]) -> float:
    """Model FLOPs of one generator step, by count: a backward is twice its forward; each critic step runs G
    forward and D forward + backward on the real, fake and (with the mismatch term) wrong batches; the
    generator step G and D forward + backward on one batch. WGAN-GP's double backward is not counted, so its
    figure is a lower bound."""
    g, d = flops["generator_forward_per_image"], flops["critic_forward_per_image"]
    critic_steps = OBJECTIVE_DEFAULTS[objective]["n_critic"]
    return batch * (critic_steps * (g + 3 * 3 * d) + 3 * g + 3 * d)


def model_flops(objective: str, ngf: int, ndf: int) -> dict[str, float]:
    """Forward FLOPs per image of the objective's own generator and critic (its OBJECTIVE_DEFAULTS networks)."""
    cfg = resolve(TrainConfig(objective=objective, ngf=ngf, ndf=ndf))
    g = build_generator(cfg.generator, 1024, cfg.z_dim, ngf, cfg.proj_dim)
    d = build_critic(cfg.critic, 1024, ndf, cfg.proj_dim if cfg.critic == "concat" else None, cfg.critic_norm,
                     cfg.spectral_norm, cfg.critic_pool)
    return {"generator": cfg.generator, "critic": cfg.critic,
            "generator_forward_per_image": count_flops_per_image(g, torch.randn(1, cfg.z_dim), torch.randn(1, 1024)),
            "critic_forward_per_image": count_flops_per_image(d, torch.randn(1, 3, 64, 64), torch.randn(1, 1024))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--objectives", default="gan-cls,wgan,wgan-gp")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--steps", type=int, default=20, help="generator steps per measurement (first is warm-up)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--clips", type=int, default=2048, help="rows in the generated clip set")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="bench-train.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    flops = {objective: model_flops(objective, args.ngf, args.ndf) for objective in args.objectives.split(",")}
    for objective, f in flops.items():
        print(f"model FLOPs/image, {objective}: G ({f['generator']}) {f['generator_forward_per_image'] / 1e9:.3f} G, "
              f"D ({f['critic']}) {f['critic_forward_per_image'] / 1e9:.3f} G (forward)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clips, features = make_clip_set(Path(tmp), args.clips)
        for objective in args.objectives.split(","):
            for variant in args.variants.split(","):
                cfg = TrainConfig(clips=str(clips), features=str(features), frames="frame88",
                                  out=str(Path(tmp) / f"{objective}-{variant}"), objective=objective,
                                  ngf=args.ngf, ndf=args.ndf, batch_size=args.batch, max_steps=args.steps,
                                  device=args.device, warmup_gen_steps=0, warmup_every=0, log_every=10**9,
                                  sample_every=10**9, hist_every=10**9, ckpt_every=10**9, resume=False,
                                  sample_sounds=1, **VARIANTS[variant])
                try:
                    if torch.cuda.is_available():
                        torch.cuda.reset_peak_memory_stats()
                    summary = run(cfg)
                    step_flops = flops_per_generator_step(objective, args.batch, flops[objective])
                    row = {"objective": objective, "variant": variant, "s_per_step": summary["s_per_step"],
                           "images_per_s": summary["images_per_s"],
                           "model_tflops_per_s": step_flops / summary["s_per_step"] / 1e12}
                    if torch.cuda.is_available() and args.device != "cpu":
                        row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
                except Exception as e:  # an option unsupported here is a row, not a crash
                    row = {"objective": objective, "variant": variant, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                rows.append(row)
                print(json.dumps(row))

    print(f"\n{'objective':<9} {'variant':<14} {'s/step':>9} {'images/s':>10} {'TFLOP/s':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['objective']:<9} {r['variant']:<14} {r['error']}")
        else:
            print(f"{r['objective']:<9} {r['variant']:<14} {r['s_per_step']:>9.4f} {r['images_per_s']:>10.1f} "
                  f"{r['model_tflops_per_s']:>8.3f}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else platform.processor() or "cpu"
    result = {"device": device, "torch": torch.__version__, "threads": torch.get_num_threads(), "args": vars(args),
              "flops": flops, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Data-parallel scaling: 1 process vs 2 DDP ranks (gloo, CPU) as real Slurm jobs on n1+n2, the gradient bytes
all-reduced per generator step, and a ring all-reduce model of scaling efficiency at 8, 64 and 512 GPUs.

    slurm/up && export SLURM_CONF=$PWD/.slurm/slurm.conf
    python benchmarks/ddp.py [--clips DIR [--features DIR]] [--repeats 3] [--steps 20] [--out bench-ddp.json]
    python benchmarks/ddp.py --no-measure --gpu-step-ms 25 --ib-gbs 20     # the model alone, no jobs

Measurement: his.train.run inside hpc.launch's StageJob, submitted with hpc.launch's make_executor to the
one-host Slurm: 1 node x 1 task, then 2 nodes (n1, n2) x 1 task (DDP over gloo), alternating, `--repeats`
times each; medians of the run's own s_per_step and images_per_s (every generator step but the first; the
per-rank batch is fixed, so 2 ranks train on twice the images per step: weak scaling). Each task gets
`--threads` CPUs and that many torch threads. n1 and n2 are the same host: the 2 ranks share its cores (and
with anything else running there), so this shows DDP's overhead on gloo, not a speed-up to expect.
Without --clips, a tiny clip set is made the way the tests make theirs (his.synth, hpc.preprocess,
hpc.features with the pretrained SoundNet) in a temporary directory.

Gradient traffic, counted from the models' parameters: DDP all-reduces every parameter's gradient after each
backward of a DDP-wrapped module. Per generator step his.train does n_critic critic updates (one all-reduce
of the critic's gradients each) and one generator update (one of the generator's; the generator loss calls
the plain critic, so no critic gradients there), in DDP buckets (first 1 MiB, then 25 MiB). DDP also
broadcasts each module's buffers (batch-norm statistics) from rank 0 at every forward of the wrapped module,
and his.train all-reduces 2 flags per step.

Model, weak scaling at a fixed per-GPU batch (assumptions, all options):
- compute per generator step t_c: --gpu-step-ms, or FLOPs per step (his.models.count_flops_per_image; a
  backward = 2 forwards; the gradient penalty's double backward = 3 more forward+backward passes) divided by
  --peak-tflops x --utilisation (H100 SXM dense TF32, the default fp32 path's convolutions, at 25%).
- all-reduce of S bytes over p ranks, NCCL ring: 2(p-1)/p * S / B + 2(p-1) * a per bucket; buffer broadcast
  (ring, pipelined): S / B + (p-1) * a. Up to --gpus-per-node GPUs: NVLink (B, a); beyond: every ring has
  inter-node hops, so InfiniBand's per-GPU bandwidth and latency bound all of it (no hierarchical all-reduce).
  The ring's latency terms grow with p; the "tree latency" columns pay 2 log2(p) hops per all-reduce and
  log2(p) per broadcast instead, as NCCL's trees do (NCCL picks trees for small messages across many nodes),
  with the same bandwidth term: at 64 and 512 GPUs the truth lies between the two.
- overlap: "serial" adds all communication to t_c. "overlap" lets the gradient all-reduces hide behind the
  backward passes (2/3 of t_c); buffer broadcasts and the flag all-reduce stay exposed.
- efficiency = t_c / (t_c + exposed communication); images/s scale as p x efficiency.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import torch
from torch import nn

from his.models import Critic, build_generator, count_flops_per_image
from his.train import TrainConfig, resolve
from hpc.launch import PipelineConfig, Resources, StageJob, make_executor, wait_for, wire

FIRST_BUCKET_BYTES = 1 << 20  # DDP's defaults: the first bucket holds the last parameters' gradients
BUCKET_BYTES = 25 << 20
BACKWARD_FRACTION = 2 / 3  # of a training pass's FLOPs: backward = 2 x forward
FLAG_BYTES = 2 * 4  # his.train's per-step all-reduce of (non-finite, stop requested)


# -------------------------------------------------------------------------------------------- data


def make_tiny_clip_set(root: Path) -> tuple[Path, Path]:
    """3 classes x 4 generated videos through the real front half of the pipeline (as tests/conftest.py)."""
    from his.synth import generate

    classes = ["PlayingCello", "PlayingDhol", "PlayingSitar"]
    generate(root / "data", classes=classes, videos_per_class=4, groups=4, ppmi_images=0, seed=0,
             duration_range=(4.0, 5.0), progress=False)

    def module(*args: str) -> None:
        subprocess.run([sys.executable, "-m", *args], check=True, capture_output=True, timeout=600)

    module("hpc.preprocess", "--videos", str(root / "data" / "UCF-101"), "--splits", str(root / "data" / "ucfTrainTestlist"),
           "--classes", ",".join(classes), "--out", str(root / "clips"), "--num-cpus", "2")
    module("hpc.features", f"data={root / 'clips'}", "actors=1", "figure=false")
    return root / "clips", only_features_dir(root / "clips")


def only_features_dir(clips: Path) -> Path:
    found = sorted(p for p in (clips / "features").glob("*") if (p / "index.h5").is_file())
    if len(found) != 1:
        raise SystemExit(f"{clips}/features holds {len(found)} feature sets: name one with --features")
    return found[0]


def feature_dim(features: Path) -> int:
    with h5py.File(features / "index.h5", "r") as f:
        return f["feature"].shape[1]


# ---------------------------------------------------------------------------------- gradient traffic


def build_models(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    generator = build_generator(cfg.generator, cfg.cond_dim, cfg.z_dim, cfg.ngf, cfg.proj_dim)
    critic = Critic(cfg.cond_dim, cfg.ndf, cfg.proj_dim, cfg.critic_norm, cfg.spectral_norm)
    return generator, critic


def grad_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)


def buffer_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers())


def ddp_bucket_count(model: nn.Module) -> int:
    """DDP's bucket assignment: gradients in reverse parameter order, a bucket closes once it reaches its cap."""
    closed, filled, cap = 0, 0, FIRST_BUCKET_BYTES
    for p in reversed([p for p in model.parameters() if p.requires_grad]):
        filled += p.numel() * p.element_size()
        if filled >= cap:
            closed, filled, cap = closed + 1, 0, BUCKET_BYTES
    return closed + (1 if filled else 0)


def uses_wrong_sounds(cfg: TrainConfig) -> bool:
    return cfg.objective == "gan-cls" or cfg.alpha > 0  # as his.train builds WrongSounds


def critic_forwards_per_critic_step(cfg: TrainConfig) -> tuple[int, int]:
    """(plain forwards: real, fake, wrong sounds; gradient-penalty forwards) of the DDP critic per critic update."""
    return 2 + int(uses_wrong_sounds(cfg)), int(cfg.objective == "wgan-gp")


@dataclass
class Traffic:
    """What crosses the interconnect per generator step (bytes per rank; fp32 gradients)."""

    generator_params: int
    critic_params: int
    generator_grad_bytes: int
    critic_grad_bytes: int
    n_critic: int
    grad_allreduce_bytes: int  # n_critic x critic + generator
    grad_allreduces: int  # one per DDP bucket per backward
    buffer_broadcast_bytes: int
    buffer_broadcasts: int
    flag_allreduces: int = 1


def count_traffic(cfg: TrainConfig) -> Traffic:
    generator, critic = build_models(cfg)
    plain, penalty = critic_forwards_per_critic_step(cfg)
    generator_forwards = cfg.n_critic + 1  # the fakes of each critic update (no grad), then the generator update
    critic_forwards = cfg.n_critic * (plain + penalty)
    broadcasts = [(buffer_bytes(m), n) for m, n in ((generator, generator_forwards), (critic, critic_forwards)) if buffer_bytes(m)]
    return Traffic(
        generator_params=sum(p.numel() for p in generator.parameters()),
        critic_params=sum(p.numel() for p in critic.parameters()),
        generator_grad_bytes=grad_bytes(generator),
        critic_grad_bytes=grad_bytes(critic),
        n_critic=cfg.n_critic,
        grad_allreduce_bytes=cfg.n_critic * grad_bytes(critic) + grad_bytes(generator),
        grad_allreduces=cfg.n_critic * ddp_bucket_count(critic) + ddp_bucket_count(generator),
        buffer_broadcast_bytes=sum(size * n for size, n in broadcasts),
        buffer_broadcasts=sum(n for _, n in broadcasts),
    )


def flops_per_generator_step(cfg: TrainConfig) -> dict[str, float]:
    """FLOPs of one generator step (n_critic critic updates + 1 generator update) per rank, from layer shapes."""
    generator, critic = build_models(cfg)
    cond = torch.randn(1, cfg.cond_dim)
    g = count_flops_per_image(generator, torch.randn(1, cfg.z_dim), cond)
    d = count_flops_per_image(critic, torch.randn(1, 3, 64, 64), cond)
    plain, penalty = critic_forwards_per_critic_step(cfg)
    # the fakes (forward only), forward + backward of each plain critic pass, and the gradient penalty: its
    # forward + input-gradient backward, then the backward through both (double backward) ~ 3 passes of 3
    critic_update = g + 3 * d * plain + 9 * d * penalty
    generator_update = 3 * g + 3 * d
    return {"generator_forward_per_image": g, "critic_forward_per_image": d,
            "per_generator_step": cfg.batch_size * (cfg.n_critic * critic_update + generator_update)}


# ------------------------------------------------------------------------------------------- measure


def measured_config(args: argparse.Namespace, cond_dim: int) -> TrainConfig:
    return resolve(TrainConfig(objective=args.objective, ngf=args.width, ndf=args.width, batch_size=args.batch,
                               max_steps=args.steps, cond_dim=cond_dim, device="cpu", warmup_gen_steps=0,
                               warmup_every=0, log_every=10**9, sample_every=10**9, hist_every=10**9,
                               ckpt_every=10**9, sample_sounds=1, resume=False))


def submit_training(args: argparse.Namespace, train: TrainConfig, clips: Path, features: Path, ranks: int,
                    run_dir: Path) -> Any:
    cfg = wire(PipelineConfig(clips=str(clips), train=dataclasses.replace(train, features=str(features))), run_dir)
    res = Resources(partition=args.partition, nodes=ranks, gpus_per_node=0, tasks_per_node=1,
                    cpus_per_task=args.threads, mem=None, time_min=30, account=None, qos=None, constraint=None)
    executor = make_executor(run_dir / "submitit", "slurm", "train", res)
    threads = f"export OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads}"
    executor.update_parameters(slurm_setup=[threads])
    return executor.submit(StageJob("train", cfg))


def measure(args: argparse.Namespace, train: TrainConfig, clips: Path, features: Path, tmp: Path) -> list[dict]:
    runs = []
    for repeat in range(args.repeats):
        for ranks in (1, 2):  # side by side: whatever else loads the host hits both alike
            submitted = time.perf_counter()
            job = submit_training(args, train, clips, features, ranks, tmp / f"run-{repeat}-{ranks}")
            (results,) = wait_for([job], args.job_timeout)
            rank0 = results[0]
            run = {"ranks": ranks, "repeat": repeat, "job": job.job_id, "s_per_step": rank0["s_per_step"],
                   "images_per_s": rank0["images_per_s"], "submit_to_result_s": time.perf_counter() - submitted,
                   "ranks_agree": len({r["weights_sha256"] for r in results}) == 1}
            runs.append(run)
            print(json.dumps(run), flush=True)
    return runs


def summarise(runs: list[dict]) -> dict[int, dict[str, float]]:
    summary = {}
    for ranks in sorted({r["ranks"] for r in runs}):
        mine = [r for r in runs if r["ranks"] == ranks]
        steps = [r["s_per_step"] for r in mine]
        summary[ranks] = {"runs": len(mine), "s_per_step": statistics.median(steps), "s_per_step_min": min(steps),
                          "s_per_step_max": max(steps),
                          "images_per_s": statistics.median(r["images_per_s"] for r in mine),
                          "submit_to_result_s": statistics.median(r["submit_to_result_s"] for r in mine)}
    return summary


# --------------------------------------------------------------------------------------------- model


@dataclass
class Link:
    name: str
    gbytes_per_s: float
    latency_us: float


def latency_hops(p: int, collective: str, algorithm: str) -> int:
    """Link latencies paid one after another: ring all-reduce 2(p-1), ring broadcast p-1; tree 2 log2 p, log2 p."""
    if algorithm == "ring":
        return 2 * (p - 1) if collective == "allreduce" else p - 1
    depth = math.ceil(math.log2(p))
    return 2 * depth if collective == "allreduce" else depth


def communication_s(p: int, traffic: Traffic, link: Link, algorithm: str) -> tuple[float, float]:
    """(gradient all-reduces, buffer broadcasts + flag all-reduce) per generator step, in seconds."""
    bandwidth, hop_s = link.gbytes_per_s * 1e9, link.latency_us * 1e-6
    grads_s = (2 * (p - 1) / p * traffic.grad_allreduce_bytes / bandwidth
               + traffic.grad_allreduces * latency_hops(p, "allreduce", algorithm) * hop_s)
    broadcasts_s = traffic.buffer_broadcast_bytes / bandwidth + traffic.buffer_broadcasts * latency_hops(p, "broadcast", algorithm) * hop_s
    flags_s = 2 * (p - 1) / p * FLAG_BYTES / bandwidth + traffic.flag_allreduces * latency_hops(p, "allreduce", algorithm) * hop_s
    return grads_s, broadcasts_s + flags_s


def scaling_row(p: int, traffic: Traffic, step_s: float, link: Link) -> dict[str, Any]:
    row: dict[str, Any] = {"gpus": p, "link": link.name, "gbytes_per_s": link.gbytes_per_s,
                           "latency_us": link.latency_us, "compute_ms": 1e3 * step_s}
    for algorithm in ("ring", "tree"):
        grads_s, others_s = communication_s(p, traffic, link, algorithm)
        exposed_s = max(0.0, grads_s - BACKWARD_FRACTION * step_s) + others_s
        row[algorithm] = {"grad_allreduce_ms": 1e3 * grads_s, "broadcast_and_flags_ms": 1e3 * others_s,
                          "efficiency_serial": step_s / (step_s + grads_s + others_s),
                          "efficiency_overlap": step_s / (step_s + exposed_s)}
    return row


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", help="clip set (hpc.preprocess output); default: make a tiny one in a temp dir")
    p.add_argument("--features", help="its feature set (default: the one under CLIPS/features/)")
    p.add_argument("--partition", default="cpu")
    p.add_argument("--objective", default="wgan-gp", choices=("gan-cls", "wgan", "wgan-gp"))
    p.add_argument("--width", type=int, default=16, help="ngf = ndf of the measured runs")
    p.add_argument("--batch", type=int, default=8, help="per-rank batch of the measured runs")
    p.add_argument("--steps", type=int, default=20, help="generator steps per run (the first is not timed)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each of 1 and 2 ranks")
    p.add_argument("--threads", type=int, default=1, help="CPUs and torch threads per rank")
    p.add_argument("--job-timeout", type=float, default=600.0, help="seconds to wait for one job")
    p.add_argument("--no-measure", action="store_true", help="only the traffic count and the model")
    p.add_argument("--gpus", default="8,64,512", help="GPU counts to model")
    p.add_argument("--gpus-per-node", type=int, default=8, help="beyond this, rings cross InfiniBand")
    p.add_argument("--gpu-width", type=int, default=TrainConfig.ngf, help="ngf = ndf of the modelled run")
    p.add_argument("--gpu-batch", type=int, default=TrainConfig.batch_size, help="per-GPU batch of the modelled run")
    p.add_argument("--gpu-step-ms", type=float, help="per-GPU time of one generator step (default: FLOPs estimate)")
    p.add_argument("--peak-tflops", type=float, default=494.7, help="H100 SXM dense TF32")
    p.add_argument("--utilisation", type=float, default=0.25, help="of --peak-tflops, for the FLOPs estimate")
    p.add_argument("--nvlink-gbs", type=float, default=360.0,
                   help="GB/s per GPU, all-reduce bus bandwidth in a node (H100 NVLink 4: 450 per direction, ~80%%)")
    p.add_argument("--nvlink-latency-us", type=float, default=1.0, help="per ring step")
    p.add_argument("--ib-gbs", type=float, default=40.0,
                   help="GB/s per GPU across nodes (one 400 Gb/s NDR port per GPU: 50 GB/s, ~80%%)")
    p.add_argument("--ib-latency-us", type=float, default=5.0, help="per ring step")
    p.add_argument("--out", default="bench-ddp.json")
    return p.parse_args(argv)


def print_measured(summary: dict[int, dict[str, float]], traffic: Traffic, flops: float) -> float | None:
    print(f"\n{'ranks':>5} {'runs':>4} {'s/step':>8} {'(min..max)':>17} {'images/s':>9} {'GFLOP/s/rank':>12} {'submit->result s':>16}")
    for ranks, s in summary.items():
        print(f"{ranks:>5} {s['runs']:>4} {s['s_per_step']:>8.4f} {s['s_per_step_min']:>8.4f}..{s['s_per_step_max']:<8.4f}"
              f"{s['images_per_s']:>9.1f} {flops / s['s_per_step'] / 1e9:>12.2f} {s['submit_to_result_s']:>16.1f}")
    if 1 not in summary or 2 not in summary:
        return None
    one, two = summary[1], summary[2]
    overhead_s = two["s_per_step"] - one["s_per_step"]
    print(f"2 ranks vs 1: images/s x{two['images_per_s'] / one['images_per_s']:.2f}, "
          f"weak-scaling efficiency {one['s_per_step'] / two['s_per_step']:.0%}, "
          f"DDP overhead {1e3 * overhead_s:+.1f} ms per generator step")
    # a ring all-reduce over 2 ranks sends 2(2-1)/2 = 1 x the bytes
    implied = traffic.grad_allreduce_bytes / 1e9 / overhead_s if overhead_s > 0 else None
    if implied:
        print(f"  as if the gradients ({traffic.grad_allreduce_bytes / 1e6:.2f} MB/step) moved at {implied:.2f} GB/s "
              f"(gloo on one host, every overhead counted as communication)")
    return implied


def megabytes(n: int) -> str:
    return f"{n / 1e6:.3f} MB"


def print_traffic(label: str, traffic: Traffic) -> None:
    print(f"\ngradient traffic per generator step, {label}:")
    print(f"  generator {traffic.generator_params:>10,} params, {megabytes(traffic.generator_grad_bytes)} of gradients, all-reduced once")
    print(f"  critic    {traffic.critic_params:>10,} params, {megabytes(traffic.critic_grad_bytes)} of gradients, all-reduced "
          f"n_critic = {traffic.n_critic} times")
    print(f"  all-reduced: {megabytes(traffic.grad_allreduce_bytes)} in {traffic.grad_allreduces} bucket all-reduces; "
          f"buffers broadcast: {megabytes(traffic.buffer_broadcast_bytes)} in {traffic.buffer_broadcasts}; "
          f"{traffic.flag_allreduces} flag all-reduce")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as tmp_name:
        tmp = Path(tmp_name)
        measured: dict[str, Any] = {}
        if args.no_measure:
            cond_dim = TrainConfig.cond_dim
        else:
            if not os.environ.get("SLURM_CONF"):
                raise SystemExit("SLURM_CONF is not set: slurm/up && export SLURM_CONF=$PWD/.slurm/slurm.conf")
            if args.clips:
                clips = Path(args.clips).resolve()
                features = Path(args.features).resolve() if args.features else only_features_dir(clips)
            else:
                started = time.perf_counter()
                clips, features = make_tiny_clip_set(tmp / "data")
                print(f"made a tiny clip set in {time.perf_counter() - started:.0f} s: {clips}")
            cond_dim = feature_dim(features)
            train = measured_config(args, cond_dim)
            traffic = count_traffic(train)
            flops = flops_per_generator_step(train)
            runs = measure(args, train, clips, features, tmp)
            summary = summarise(runs)
            print_traffic(f"measured (width {args.width}, batch {args.batch}, {args.objective})", traffic)
            implied = print_measured(summary, traffic, flops["per_generator_step"])
            measured = {"clips": str(clips), "features": str(features), "config": dataclasses.asdict(train),
                        "traffic": dataclasses.asdict(traffic), "flops": flops, "runs": runs,
                        "summary": {str(k): v for k, v in summary.items()}, "implied_gloo_gbytes_per_s": implied,
                        "all_ranks_agree": all(r["ranks_agree"] for r in runs)}

    gpu_cfg = resolve(TrainConfig(objective=args.objective, ngf=args.gpu_width, ndf=args.gpu_width,
                                  batch_size=args.gpu_batch, cond_dim=cond_dim))
    gpu_traffic = count_traffic(gpu_cfg)
    gpu_flops = flops_per_generator_step(gpu_cfg)
    if args.gpu_step_ms:
        step_s, step_source = args.gpu_step_ms / 1e3, "--gpu-step-ms"
    else:
        step_s = gpu_flops["per_generator_step"] / (args.peak_tflops * 1e12 * args.utilisation)
        step_source = (f"{gpu_flops['per_generator_step'] / 1e12:.3f} TFLOP per step at {args.utilisation:.0%} "
                       f"of {args.peak_tflops:g} TFLOP/s")
    nvlink = Link("NVLink", args.nvlink_gbs, args.nvlink_latency_us)
    infiniband = Link("InfiniBand", args.ib_gbs, args.ib_latency_us)
    rows = [scaling_row(p, gpu_traffic, step_s, nvlink if p <= args.gpus_per_node else infiniband)
            for p in (int(n) for n in args.gpus.split(","))]

    print_traffic(f"modelled (width {args.gpu_width}, batch {args.gpu_batch}, {args.objective})", gpu_traffic)
    print(f"\nscaling model: per-GPU generator step {1e3 * step_s:.2f} ms ({step_source}); weak scaling, NCCL ring")
    print(f"{'':>37} {' ring all-reduce ':-^35} {' tree latency ':-^18}")
    print(f"{'GPUs':>5} {'link':<10} {'GB/s':>4} {'lat':>4} {'compute ms':>10} {'grad AR ms':>10} {'other ms':>8} "
          f"{'serial':>7} {'overlap':>7} {'grad AR ms':>10} {'overlap':>7} {'images/s':>9}")
    for r in rows:
        ring, tree = r["ring"], r["tree"]
        r["images_per_s_ring_overlap"] = r["gpus"] * ring["efficiency_overlap"] * args.gpu_batch * gpu_cfg.n_critic / step_s
        print(f"{r['gpus']:>5} {r['link']:<10} {r['gbytes_per_s']:>4g} {r['latency_us']:>4g} {r['compute_ms']:>10.2f} "
              f"{ring['grad_allreduce_ms']:>10.3f} {ring['broadcast_and_flags_ms']:>8.3f} {ring['efficiency_serial']:>7.1%} "
              f"{ring['efficiency_overlap']:>7.1%} {tree['grad_allreduce_ms']:>10.3f} {tree['efficiency_overlap']:>7.1%} "
              f"{r['images_per_s_ring_overlap']:>9.0f}")
    print("GB/s per GPU, lat = us per hop; other = buffer broadcasts + flag all-reduce (never overlapped); "
          "images/s: ring, overlap, critic images as his.train counts them")

    result = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__, "args": vars(args),
              "measured": measured,
              "model": {"config": dataclasses.asdict(gpu_cfg), "traffic": dataclasses.asdict(gpu_traffic),
                        "flops": gpu_flops, "step_s": step_s, "step_source": step_source,
                        "backward_fraction": BACKWARD_FRACTION, "rows": rows}}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

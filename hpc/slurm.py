"""What a launch asks Slurm for, checked against what sinfo says the cluster has before anything is submitted."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from dataclasses import dataclass


class SlurmError(RuntimeError):
    """A request the cluster cannot take, or a time limit that is not one; one line."""


@dataclass(frozen=True)
class Resources:
    partition: str | None
    nodes: int
    gpus_per_node: int
    tasks_per_node: int
    cpus_per_task: int
    mem: str | None
    time_min: int
    account: str | None
    qos: str | None
    constraint: str | None


_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


def parse_time(text: str) -> int:
    """A Slurm time limit -> minutes, rounded up to the next whole minute."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise SlurmError(f"time {text!r} is not a Slurm time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS)")
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    if m.group(1) is None and m.group(4) is None:  # no days and at most one colon: MM[:SS]
        hours, minutes, seconds = 0, hours, minutes
    return (days * 24 + hours) * 60 + minutes + (1 if seconds else 0)


class SlurmUnreachable(SlurmError):
    """sinfo could not ask the cluster: no controller answers, or no slurm.conf."""


SINFO_TIMEOUT_S = 20.0  # sinfo retries a missing slurm.conf for 60 s and an unreachable controller for ~9 s


def sinfo(*fields: str, partition: str | None = None) -> list[list[str]]:
    args = ["sinfo", "-h", "-o", "|".join(fields)] + (["-p", partition] if partition else [])
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=SINFO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmUnreachable(f"sinfo gave no answer in {SINFO_TIMEOUT_S:.0f} s (is SLURM_CONF right?)") from None
    if out.returncode != 0:
        # sinfo repeats its errors once per retry: its last "error:" line says why, else its last line
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        why = next((line for line in reversed(lines) if line.startswith("sinfo: error: ")), lines[-1])
        raise SlurmUnreachable(f"sinfo failed: {why.removeprefix('sinfo: error: ')} (is SLURM_CONF right?)")
    return [line.split("|") for line in out.stdout.splitlines() if line.strip()]


def check_partition(res: Resources) -> tuple[int, int | None]:
    """Validate partition and node count against sinfo; return the GPUs and CPUs per node the partition's
    smallest nodes offer (CPUs None without a partition: nothing to check them against)."""
    names = sorted({row[0].rstrip("*") for row in sinfo("%P")})
    if res.partition is None:
        return 0, None
    if res.partition not in names:
        raise SlurmError(f"unknown partition {res.partition!r} (sinfo lists: {', '.join(names)})")
    rows = sinfo("%D", "%G", "%c", partition=res.partition)
    nodes = sum(int(row[0]) for row in rows)
    if res.nodes > nodes:
        raise SlurmError(f"--nodes {res.nodes}: partition {res.partition!r} has only {nodes} node(s)")
    gpus = [int(m.group(1)) for row in rows for m in [re.search(r"gpu(?::[^:(,]+)?:(\d+)", row[1])] if m]
    cpus = [int(row[2].rstrip("+")) for row in rows if row[2].rstrip("+").isdigit()]
    return (min(gpus) if gpus else 0), (min(cpus) if cpus else None)


def fit_to_partition(res: Resources, gpus_per_node: int | None) -> Resources:
    """The request checked against sinfo; without --gpus-per-node (None), the GPUs the partition's nodes have."""
    offered, cpus = check_partition(res)
    if gpus_per_node is None:
        res = dataclasses.replace(res, gpus_per_node=offered)
    elif gpus_per_node > offered:
        raise SlurmError(f"--gpus-per-node {gpus_per_node}: partition {res.partition!r} nodes have {offered}")
    tasks = res.gpus_per_node or res.tasks_per_node  # a DDP stage's ranks per node
    if cpus is not None and tasks * res.cpus_per_task > cpus:
        raise SlurmError(f"{tasks} task(s) per node x --cpus-per-task {res.cpus_per_task} = "
                         f"{tasks * res.cpus_per_task} CPUs: partition {res.partition!r} nodes have {cpus}")
    return res

"""Ray inside a Slurm allocation: a head on the job's first node, one worker on each other node, torn down with
the job, for the stages that spread work over Ray (features).

One task runs per node. Task 0 starts the head (`ray start --head --block`, a process group of its own), writes
its address into the job's rendezvous folder (on the shared filesystem beside the job's logs), waits until every
node has joined, and is the Ray driver. Every other task reads the address, starts a worker joined to it, and
waits until the driver says it is done (or the head goes away). Each task then ends its own Ray processes: on
success, on failure, on preemption (submitit's requeue raises SystemExit) and on cancellation (SIGTERM). The
temporary directory (/tmp/ray-his-<job>) and every port are per job, so two jobs sharing a node do not collide.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

JOIN_TIMEOUT_S = 120.0  # for every node to join the head
STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL, for a node's Ray processes


class RayStartError(RuntimeError):
    """Ray could not be brought up across the allocation; one line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_name() -> str:
    """The Slurm node this runs on (emulated nodes share one host, so the hostname alone cannot tell them apart)."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname()


def temp_dir(job_id: str) -> Path:
    return Path("/tmp") / f"ray-his-{job_id}"  # short: Ray's unix socket paths must stay under ~107 bytes


def start_ray(args: list[str], cpus: int, gpus: int, job_id: str, log: Path) -> subprocess.Popen:
    """`ray start --block` with this node's share of the allocation, in a process group of its own."""
    command = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
               f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--temp-dir={temp_dir(job_id)}",
               f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}", *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})


def stop_ray(process: subprocess.Popen) -> None:
    """End every process of the node's Ray (its whole process group): SIGTERM, then SIGKILL after a grace."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.1)
        if not _group_alive(process.pid):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """SIGTERM (scancel, Slurm's kill at the time limit) as SystemExit, so the teardown in `finally` runs."""
    def raise_exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def ray_head(rendezvous: Path, job_id: str, nodes: int, cpus: int, gpus: int) -> Iterator[str]:
    """Task 0: start the head on this node, wait for `nodes` nodes in all, yield the address to ray.init."""
    import ray

    port = free_port()
    address = f"{socket.gethostbyname(socket.gethostname())}:{port}"
    head = start_ray(["--head", f"--port={port}", f"--ray-client-server-port={free_port()}",
                      "--include-dashboard=false"], cpus, gpus, job_id, rendezvous / f"ray-{node_name()}.log")
    with _sigterm_exits():
        try:
            deadline = time.monotonic() + JOIN_TIMEOUT_S
            while True:  # the head answers once its GCS is up
                if head.poll() is not None:
                    raise RayStartError(f"the Ray head exited (status {head.returncode}); see {rendezvous}")
                try:
                    ray.init(address=address, log_to_driver=False)
                    break
                except ConnectionError:
                    if time.monotonic() > deadline:
                        raise RayStartError(f"the Ray head at {address} did not answer in {JOIN_TIMEOUT_S:.0f} s")
                    time.sleep(0.5)
            (rendezvous / "address").write_text(address)
            while (joined := sum(n["Alive"] for n in ray.nodes())) < nodes:
                if time.monotonic() > deadline:
                    raise RayStartError(f"only {joined} of {nodes} nodes joined Ray in {JOIN_TIMEOUT_S:.0f} s")
                time.sleep(0.5)
            yield address
        finally:
            (rendezvous / "done").write_text("")
            if ray.is_initialized():
                ray.shutdown()
            stop_ray(head)


def ray_worker(rendezvous: Path, job_id: str, cpus: int, gpus: int) -> None:
    """Every other task: join the head as a worker node and wait until the driver is done."""
    address = None
    with _sigterm_exits():
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while not (rendezvous / "address").exists():
            if (rendezvous / "done").exists():
                return  # the head gave up before this node could join
            if time.monotonic() > deadline:
                raise RayStartError(f"no Ray head address at {rendezvous} after {JOIN_TIMEOUT_S:.0f} s")
            time.sleep(0.2)
        address = (rendezvous / "address").read_text().strip()
        worker = start_ray([f"--address={address}"], cpus, gpus, job_id, rendezvous / f"ray-{node_name()}.log")
        try:
            while not (rendezvous / "done").exists():
                if worker.poll() is not None:
                    raise RayStartError(f"the Ray worker on {node_name()} exited (status {worker.returncode})")
                time.sleep(0.5)
        finally:
            stop_ray(worker)

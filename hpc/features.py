"""SoundNet feature extraction over a Ray actor pool: each actor loads the model once (on its GPU when it has
one) and extracts whole clip shards; the driver then standardises, indexes and draws (his.audio.features).

    python -m hpc.features [CONFIG.toml] data=demo/clips checkpoint=demo/soundnet/soundnet_finetuned.pt actors=2
"""

from __future__ import annotations

import dataclasses

import ray
import torch
from ray.util import ActorPool
from tqdm import tqdm

from his.audio.features import (FeaturesConfig, ShardJob, extract_shard, feature_layer, finish, hold,
                                load_feature_model, pending_jobs, plan, summary_if_complete)
from his.config import stage_main
from his.distributed import choose_device
from his.io import InputError, write_json
from hpc.ray_cluster import node_name


@dataclasses.dataclass
class PoolFeaturesConfig(FeaturesConfig):
    address: str = ""  # Ray cluster address; "" starts a local Ray
    actors: int = 2
    gpus_per_actor: float = 0.0  # > 0 puts each actor on (a share of) a GPU
    cpus_per_actor: float = 1.0


@ray.remote
class FeatureActor:
    def __init__(self, checkpoint: str, layer: str, batch_size: int, threads: int):
        torch.set_num_threads(threads)
        # Ray narrows CUDA_VISIBLE_DEVICES to this actor's GPU, so "cuda" is that GPU when it has one.
        device = choose_device("auto")
        self.model, self.layer = load_feature_model(checkpoint, layer, device)
        self.batch_size = batch_size

    def extract(self, job: ShardJob) -> tuple[int, str]:
        """(rows extracted, the Slurm node or host that extracted them)."""
        return extract_shard(self.model, self.layer, job, self.batch_size), node_name()


def run(cfg: PoolFeaturesConfig) -> dict:
    features_dir, checkpoint, sha, jobs = plan(cfg)
    with hold(features_dir, "hpc.features"):
        done = summary_if_complete(features_dir, sha, jobs)
        if done is not None:
            return done
        pending = pending_jobs(jobs)
        rows_per_node: dict[str, int] = {}
        if pending:
            if not ray.is_initialized():
                ray.init(address=cfg.address or None, include_dashboard=False, log_to_driver=False)
            # SPREAD: over every node of the cluster first, then more per node
            actor = FeatureActor.options(num_cpus=cfg.cpus_per_actor, num_gpus=cfg.gpus_per_actor,
                                         scheduling_strategy="SPREAD")
            threads = max(1, int(cfg.cpus_per_actor))
            pool = ActorPool([actor.remote(cfg.checkpoint, cfg.layer, cfg.batch_size, threads)
                              for _ in range(min(cfg.actors, len(pending)))])
            try:
                for rows, node in tqdm(pool.map_unordered(lambda a, job: a.extract.remote(job), pending),
                                       total=len(pending), desc="soundnet features (ray)"):
                    rows_per_node[node] = rows_per_node.get(node, 0) + rows
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, InputError):  # a damaged or non-finite shard: its one line, not Ray's
                    raise e.cause from None
                raise
        summary = finish(cfg, features_dir, checkpoint, sha, jobs, feature_layer(cfg.checkpoint, cfg.layer))
        result = {**summary, "extracted_shards": len(pending), "skipped_shards": len(jobs) - len(pending),
                  "rows_per_node": dict(sorted(rows_per_node.items()))}
        write_json(features_dir / "report.json", result)  # which node extracted how many clips' features
    return result


def main(argv: list[str] | None = None) -> int:
    return stage_main(PoolFeaturesConfig, run, argv, prog="hpc.features", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())

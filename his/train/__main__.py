"""python -m his.train [train|pretrain] [CONFIG.toml] [key=value ...]"""

from __future__ import annotations

import json
import sys

import his.train
from his.config import stage_main
from his.train.config import PretrainConfig, TrainConfig
from his.train.loop import NonFiniteLoss, run


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    stage = args.pop(0) if args and args[0] in ("train", "pretrain") else "train"
    return stage_main(PretrainConfig if stage == "pretrain" else TrainConfig, run, args,
                      prog="his.train pretrain" if stage == "pretrain" else "his.train", doc=his.train.__doc__,
                      show=lambda summary: print(json.dumps({k: v for k, v in summary.items() if k != "final"})),
                      failures=(NonFiniteLoss,))


if __name__ == "__main__":
    sys.exit(main())

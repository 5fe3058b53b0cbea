"""python -m his.train [train|pretrain] [CONFIG.toml] [key=value ...]"""

from __future__ import annotations

import dataclasses
import json
import sys

import his.train
from his.config import ConfigError, load_config
from his.train.config import PretrainConfig, TrainConfig
from his.train.loop import NonFiniteLoss, run


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(his.train.__doc__)
        print("fields (key=value):", ", ".join(f.name for f in dataclasses.fields(TrainConfig)))
        return 0
    stage = args.pop(0) if args and args[0] in ("train", "pretrain") else "train"
    toml = args.pop(0) if args and args[0].endswith(".toml") else None
    try:
        cfg = load_config(PretrainConfig if stage == "pretrain" else TrainConfig, toml, args)
        summary = run(cfg)
    except (ConfigError, NonFiniteLoss) as e:
        print(e, file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

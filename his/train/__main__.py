"""python -m his.train [train|pretrain] [CONFIG.toml] [key=value ...]"""

from __future__ import annotations

import json
import sys

import his.train
from his.config import ConfigError, config_error, config_from_argv
from his.log import setup_logging
from his.train.config import PretrainConfig, TrainConfig
from his.train.loop import NonFiniteLoss, run


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = list(sys.argv[1:] if argv is None else argv)
    stage = args.pop(0) if args and args[0] in ("train", "pretrain") else "train"
    prog = "his.train pretrain" if stage == "pretrain" else "his.train"
    cfg = config_from_argv(PretrainConfig if stage == "pretrain" else TrainConfig, args, prog=prog,
                           doc=his.train.__doc__)
    try:
        summary = run(cfg)
    except ConfigError as e:
        return config_error(prog, e)
    except NonFiniteLoss as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

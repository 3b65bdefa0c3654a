"""Train one SIT stage.

    deepspeed launch/train.py --stage cochl [key=value ...]          # all GPUs of this machine
    torchrun --nproc_per_node 4 launch/train.py --stage tau init_from=runs/cochl/<run>/model.pt
    python launch/train.py --stage cochl --demo                      # one process, built-in demo corpus

`--stage NAME` reads configs/NAME.yaml; `--demo` adds configs/demo/NAME.yaml and packs the demo corpus on
first use; `key=value` overrides any config key (e.g. train.epochs=5 optim.method=seq_ft).
Exit status: 0 done, 2 bad configuration or no checkpoint to resume from that verifies (never requeued), 75
checkpointed after a pre-emption signal (run again to resume).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer import distributed
from trainer.checkpoint_files import NoGoodCheckpointError, UnsafeCheckpointError
from trainer.config import ConfigError, available_stages, load_config
from trainer.demo import ensure_demo_shards
from trainer.engine import Trainer


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", required=True, help=f"config in configs/: {', '.join(available_stages())}")
    parser.add_argument("--demo", action="store_true", help="train on the built-in demo corpus (CPU friendly)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by `deepspeed`
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    distributed.setup_logging()
    trainer = None
    try:
        cfg = load_config(args.stage, args.overrides, demo=args.demo)
        if args.demo:
            ensure_demo_shards(Path(cfg.data.root))
        trainer = Trainer(cfg).setup()
        return trainer.fit()
    except (ConfigError, NoGoodCheckpointError, UnsafeCheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if trainer is not None:
            trainer.close()
        distributed.teardown()


if __name__ == "__main__":
    distributed.exit_process(main())

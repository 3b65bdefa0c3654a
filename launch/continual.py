"""Split AudioSet continual learning: one method through the 10-task sequence.

    python launch/continual.py method=ewc                          # published hyperparameters, synthetic stand-in
    python launch/continual.py method=hnet data.pickle=/data/audioset_data_balanced.pickle
    python launch/continual.py method=finetune n_iter=500 net.hidden=64

`method=<name>` reads configs/continual/<name>.yaml; other key=value pairs override it.  Prints the
accuracy matrix, during / final accuracy, backward transfer and the run directory.
"""
from __future__ import annotations

import json
import logging
import sys

import numpy as np
from tabulate import tabulate

from trainer.configtools import ConfigError
from trainer.continual.config import load_continual_config
from trainer.continual.data import DataError
from trainer.continual.runner import run_and_save


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    try:
        folder = run_and_save(load_continual_config(args))
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    s = json.loads((folder / "summary.json").read_text())
    matrix = np.array(s["accuracy_matrix"])
    print(tabulate(matrix, headers=[f"T{j}" for j in range(matrix.shape[1])], floatfmt=".1f", showindex="always"))
    print(f"{s['method']}: during {s['during_accuracy']:.2f}%, final {s['final_accuracy']:.2f}%, "
          f"backward transfer {s['backward_transfer']:.2f}, forgetting {s['forgetting']:.2f}"
          + (f" (stopped early: {s['stopped_early']})" if s["stopped_early"] else ""))
    print(f"run directory: {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

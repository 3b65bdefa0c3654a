"""How saturated the LSTM's gates start on the stand-in's codes: default init against HNET's generated weights.

    python benchmarks/continual_saturation.py --out benchmarks/results/continual_saturation.md

For each code scale of the stand-in (`small`, `vggish`) and each way the main network gets its first weights
(a run's own LSTM, PyTorch's default init: `finetune`; the chunked hypernetwork's output for task 0: `hnet`),
the input part of the gate pre-activations, W_ih x + b_ih + b_hh, over 2,000 training clips of task 0 (all 10
frames): its standard deviation and the share beyond +-5, where the sigmoid's slope is below 0.007 and the
gradient through the gate almost vanishes.  The published configs' init, seed 0.
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch
from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.machine import source_commit  # noqa: E402


def gate_inputs(method, hnet: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_ih, b_ih + b_hh) of the main network as the method starts task 0."""
    if hnet:
        p = method.unflatten(method.hnet([0])[0])
        return p["lstm.weight_ih_l0"].detach(), (p["lstm.bias_ih_l0"] + p["lstm.bias_hh_l0"]).detach()
    lstm = method.net.lstm
    return lstm.weight_ih_l0.detach(), (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2000)
    ap.add_argument("--tiny", action="store_true", help="a stand-in of 70 clips per class (the plumbing, in seconds)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    size = dict(train_per_class=60, test_per_class=10) if args.tiny else {}
    from trainer.continual.config import load_continual_config
    from trainer.continual.data import make_tasks, synthetic
    from trainer.continual.methods import METHODS

    rows = []
    for codes in ("small", "vggish"):
        x = make_tasks(*synthetic(0, codes=codes, **size))[0].train_x[:args.clips].float()
        for run in ("finetune", "hnet"):
            cfg = load_continual_config([f"method={run}", "train.seed=0"])
            torch.manual_seed(cfg.train.seed)
            weight, bias = gate_inputs(METHODS[cfg.method](cfg, torch.device("cpu")), run == "hnet")
            pre = x @ weight.T + bias
            rows.append([codes, run, f"{x.mean():.1f}", f"{weight.std():.3f}", f"{pre.std():.1f}",
                         f"{(pre.abs() > 5).float().mean():.1%}"])
    table = tabulate(rows, headers=["codes", "run (init)", "mean code", "W_ih std", "pre-activation std",
                                    "beyond +-5"], tablefmt="github")
    text = (f"## LSTM gate saturation at the start, on the stand-in's codes ({datetime.date.today()}, commit "
            f"{source_commit(REPO)})\n\n`python benchmarks/continual_saturation.py {' '.join(sys.argv[1:])}`: "
            f"input part of the gate pre-activations over {args.clips} training clips of task 0, seed 0.\n\n"
            f"{table}\n")
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()

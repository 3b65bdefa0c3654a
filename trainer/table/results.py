"""The table from what the runs left: mean +/- std over seeds per method and TAU split, beside the published numbers.

Only finished runs count (their `summary.json`); a cell says how many seeds it holds, so a partial table
reads as one.  TAU runs that carried the CochlScene head (`summary.json`'s `previous`) add CochlScene's test
accuracy before and after TAU and the forgetting (before - after), per seed, then as mean +/- std.  The std is the population std over the seeds (numpy's default).  When any run chose its
epoch on the test split (the reference protocol) the table says so: its test numbers are optimistic.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
from tabulate import tabulate

from data_shards.atomic import atomic_path

from .plan import SUMMARY, Table

# The seed's table (reference/sit.md): TAU test accuracy %, mean and std over runs, per method and split.
PUBLISHED = {
    "standard_ft": {5: (51.155, 0.465), 10: (54.541, 0.295), 25: (58.678, 0.163), 50: (60.305, 0.247),
                    100: (62.102, 0.302)},
    "seq_ft": {5: (52.364, 0.430), 10: (55.546, 0.230), 25: (58.669, 0.214), 50: (60.466, 0.256),
               100: (61.421, 0.361)},
    "sit": {5: (53.312, 0.265), 10: (56.232, 0.282), 25: (59.472, 0.178), 50: (61.062, 0.145),
            100: (62.460, 0.207)},
}
LABELS = {"standard_ft": "Standard FT", "seq_ft": "Seq-FT", "sit": "SIT", "ewc": "EWC", "si": "SI", "lwf": "LwF",
          "replay": "Replay"}
KEPT = {"before": 100.0, "after": 100.0, "forgetting": 100.0}  # CochlScene accuracy before / after TAU, points
TRADEOFF = "tradeoff.png"
METRICS = {"accuracy": 100.0, "macro_accuracy": 100.0, "log_loss": 1.0}  # summary key -> display scale
OPTIMISTIC = "optimistic (selected on test), as the reference"
CALLS = "calls.txt"


def collect(table: Table) -> pd.DataFrame:
    """One row per finished run: stage, method, split, seed, test metrics and what the epoch was chosen on."""
    rows = []
    for run in table.runs():
        path = run.folder(table.runs_dir) / SUMMARY
        if not path.is_file():
            continue
        summary = json.loads(path.read_text())
        selected = summary.get("selection") or {}
        previous = summary.get("previous") or {}
        kept = {"before": previous["before"]["accuracy"], "after": previous["after"]["accuracy"],
                "forgetting": previous["forgetting"]} if previous else dict.fromkeys(KEPT, math.nan)
        rows.append({"stage": run.stage, "method": run.method, "split": run.split, "seed": run.seed,
                     **{m: summary["test"][m] for m in METRICS}, **kept, "best_epoch": summary["best_epoch"],
                     "selected_on": selected.get("split", summary.get("val_split")),  # older runs: no `selection`
                     "on_test": bool(selected.get("on_test"))})
    return pd.DataFrame(rows, columns=["stage", "method", "split", "seed", *METRICS, *KEPT, "best_epoch",
                                       "selected_on", "on_test"])


def aggregate(runs: pd.DataFrame, methods: list[str], splits: list[int]) -> pd.DataFrame:
    """Per method and TAU split: n seeds, mean and population std of each metric (scaled for display), published."""
    tau = runs[runs["stage"] != "cochl"]
    rows = []
    for method in methods:
        for split in splits:
            cell = tau[(tau["method"] == method) & (tau["split"] == split)]
            row = {"method": method, "split": split, "n": len(cell), "seeds": " ".join(map(str, sorted(cell["seed"]))),
                   "on_test": bool(cell["on_test"].any())}
            for metric, scale in {**METRICS, **KEPT}.items():
                row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = _mean_std_n(cell[metric], scale)
            row["published_mean"], row["published_std"] = PUBLISHED.get(method, {}).get(split, (math.nan, math.nan))
            rows.append(row)
    return pd.DataFrame(rows)


def _mean_std_n(values: pd.Series, scale: float = 1.0) -> tuple[float, float, int]:
    """Mean and population std over the seeds that have a value (NaN, NaN for none), and how many have one."""
    v = values.dropna().to_numpy(dtype=float) * scale
    return (v.mean(), v.std(), len(v)) if len(v) else (math.nan, math.nan, 0)


def _mean_std(values: pd.Series, scale: float = 1.0) -> tuple[float, float]:
    return _mean_std_n(values, scale)[:2]


def _cell(mean: float, std: float, digits: int) -> str:
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def record_call(table: Table, line: str) -> None:
    """Note when, where and how fast a call trained runs (listed in table.md: the table's wall times and machines)."""
    with (table.folder / CALLS).open("a") as f:
        f.write(line + "\n")


def markdown(table: Table, stats: pd.DataFrame, runs: pd.DataFrame) -> str:
    s = table.spec
    optimistic = bool(runs["on_test"].any())
    calls = (table.folder / CALLS).read_text().splitlines() if (table.folder / CALLS).is_file() else []
    lines = [f"# SIT table `{s.name}`: TAU test split, mean ± std over seeds", "",
             *(f"- trained {c}" for c in calls),
             f"- protocol: **{s.protocol}**; methods {', '.join(LABELS[m] for m in s.methods)}; TAU splits "
             f"{', '.join(f'{p}%' for p in s.splits)}; seeds {' '.join(map(str, s.seeds))}"
             f"{'; demo corpus' if s.demo else ''}",
             f"- overrides: `{' '.join(s.overrides)}`" if s.overrides else "- overrides: none",
             f"- finished runs: {len(runs)} of {len(table.runs())}; std = population std over the seeds (n per cell)",
             f"- model selection: {_selection_note(runs)}"]
    if optimistic:
        lines.append(f"- **{OPTIMISTIC}**: the kept epoch was chosen on the split the table reports")
    lines.append("")
    sections = (("Accuracy %", "accuracy", 2), ("Macro-averaged class accuracy %", "macro_accuracy", 2),
                ("Log loss", "log_loss", 3))
    for title, metric, digits in sections:
        published = metric == "accuracy"  # the seed's table has accuracy only
        body = []
        for split in s.splits:
            row = [f"{split}%"]
            for method in s.methods:
                r = stats[(stats["method"] == method) & (stats["split"] == split)].iloc[0]
                row.append(f"{_cell(r[f'{metric}_mean'], r[f'{metric}_std'], digits)} (n={r['n']})")
                if published and method in PUBLISHED:  # the seed's table has no continual-learning methods
                    row.append(_cell(r["published_mean"], r["published_std"], 2))
            body.append(row)
        heads = ["TAU split"] + [h for m in s.methods for h in ([LABELS[m], f"{LABELS[m]} published"]
                                                                 if published and m in PUBLISHED
                                                                 else [LABELS[m]])]
        lines += [f"## {title}{' (' + OPTIMISTIC + ')' if optimistic else ''}", "",
                  tabulate(body, headers=heads, tablefmt="github", disable_numparse=True), ""]
    if stats["forgetting_n"].sum():
        lines += _forgetting(s, stats)
    cochl = runs[runs["stage"] == "cochl"]
    if len(cochl):
        body = [[LABELS[m], f"{_cell(*_mean_std(g['accuracy'], 100.0), 2)} (n={len(g)})",
                 _cell(*_mean_std(g["log_loss"]), 3)] for m, g in cochl.groupby("method")]
        lines += ["## Stage 1: CochlScene test split", "",
                  tabulate(body, headers=["CochlScene model", "accuracy %", "log loss"], tablefmt="github",
                           disable_numparse=True), ""]
    return "\n".join(lines)


def _forgetting(spec, stats: pd.DataFrame) -> list[str]:
    """Per TAU split: each method's TAU accuracy next to CochlScene's before and after TAU, and the difference."""
    lines = ["## Forgetting: CochlScene test accuracy % before and after TAU (its head carried, frozen)", "",
             "forgetting = before - after, per seed, then mean ± std; TAU = TAU test accuracy %.", ""]
    for split in spec.splits:
        body = []
        for method in spec.methods:
            r = stats[(stats["method"] == method) & (stats["split"] == split)].iloc[0]
            if not r["forgetting_n"]:
                continue
            body.append([LABELS[method], f"{_cell(r['accuracy_mean'], r['accuracy_std'], 2)}",
                         *(_cell(r[f"{k}_mean"], r[f"{k}_std"], 2) for k in KEPT), str(r["forgetting_n"])])
        lines += [f"### TAU split {split}%", "",
                  tabulate(body, headers=["method", "TAU", "CochlScene before", "CochlScene after", "forgetting",
                                          "n"], tablefmt="github", disable_numparse=True), ""]
    return lines


def _selection_note(runs: pd.DataFrame) -> str:
    if runs.empty:
        return "-"
    parts = []
    for stage, group in runs.groupby("stage", sort=False):
        chosen = sorted({"last epoch (no validation)" if v is None else f"best epoch on '{v}'"
                         for v in group["selected_on"]})
        parts.append(f"{stage}: {', '.join(chosen)}")
    return "; ".join(parts)


def plot(table: Table, stats: pd.DataFrame, path: Path, optimistic: bool) -> None:
    """Accuracy vs TAU split, one line per method with error bars (ours solid, published dashed)."""
    fig, ax = _axes()
    for i, method in enumerate(table.spec.methods):
        rows = stats[stats["method"] == method].sort_values("split")
        colour = f"C{i}"
        ax.errorbar(rows["split"], rows["accuracy_mean"], yerr=rows["accuracy_std"], marker="o", capsize=3,
                    color=colour, label=f"{LABELS[method]} (ours)")
        if method in PUBLISHED:
            ax.errorbar(rows["split"], rows["published_mean"], yerr=rows["published_std"], marker="x", capsize=3,
                        color=colour, linestyle="--", alpha=0.6, label=f"{LABELS[method]} (published)")
    ax.set_xscale("log")
    ax.set_xticks(table.spec.splits, [f"{p}%" for p in table.spec.splits])
    ax.minorticks_off()
    ax.set_xlabel("TAU training split")
    ax.set_ylabel("test accuracy %")
    ax.set_title(f"SIT table '{table.spec.name}' ({table.spec.protocol} protocol"
                 f"{'; ' + OPTIMISTIC if optimistic else ''})", fontsize=9)
    _save(fig, ax, path, legend_size=7)


def plot_tradeoff(table: Table, stats: pd.DataFrame, path: Path) -> None:
    """TAU test accuracy against the CochlScene test accuracy kept after TAU: one colour per method, one marker
    per TAU split, mean +- std over the seeds both ways; the dotted line is CochlScene before TAU (mean)."""
    fig, ax = _axes()
    markers = "osD^v<>"
    for i, method in enumerate(table.spec.methods):
        for j, split in enumerate(table.spec.splits):
            r = stats[(stats["method"] == method) & (stats["split"] == split)].iloc[0]
            if not r["forgetting_n"]:
                continue
            ax.errorbar(r["after_mean"], r["accuracy_mean"], xerr=r["after_std"], yerr=r["accuracy_std"],
                        marker=markers[j % len(markers)], color=f"C{i}", capsize=3, linestyle="none",
                        label=f"{LABELS[method]}, TAU {split}%")
    before = stats["before_mean"].dropna()
    if len(before):
        ax.axvline(before.mean(), color="grey", linestyle=":", label="CochlScene before TAU")
    ax.set_xlabel("CochlScene test accuracy % after TAU (kept)")
    ax.set_ylabel("TAU test accuracy %")
    ax.set_title(f"SIT table '{table.spec.name}': what TAU gains against what CochlScene keeps", fontsize=9)
    _save(fig, ax, path, legend_size=6)


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def _save(fig, ax, path: Path, legend_size: int) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, ncol=2)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def write(table: Table) -> tuple[str, pd.DataFrame]:
    """table.md, table.csv and table.png (tradeoff.png with forgetting) in the table's folder, from the runs
    finished so far."""
    runs = collect(table)
    stats = aggregate(runs, table.spec.methods, table.spec.splits)
    text = markdown(table, stats, runs)
    with atomic_path(table.folder / "table.md") as tmp:
        tmp.write_text(text + "\n")
    with atomic_path(table.folder / "table.csv") as tmp:
        stats.to_csv(tmp, index=False, float_format="%.4f")
    plot(table, stats, table.folder / "table.png", bool(runs["on_test"].any()))
    if stats["forgetting_n"].sum():
        plot_tradeoff(table, stats, table.folder / TRADEOFF)
    return text, stats

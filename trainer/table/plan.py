"""The SIT result table as a graph of training runs: which stage runs, from which model, under which name.

Standard FT trains on TAU straight from the stage config's `init_from` (the AudioSet PaSST); SIT and Seq-FT
first fine-tune on CochlScene (one run per method and seed, with that method's learning rates) and every
TAU split of that method and seed starts from that run's `model.pt`.  The continual-learning methods (EWC, SI,
LwF, replay) are Seq-FT's learning rates plus a term that protects CochlScene: their TAU runs start from the
Seq-FT CochlScene run of their seed, which then records what EWC and SI need (`retain.record`).  Every TAU run
of the chain carries the CochlScene head frozen and tests CochlScene before and after (`retain.keep_head`), so
the table reports what each method forgot.  Runs are grouped as a cluster submits
them: a CochlScene group of one run, then the group of TAU runs that starts from it (one SLURM array), and
one group of Standard FT runs per seed.  The spec is saved beside the results (`table.json`), so a later call
(or a SLURM task) rebuilds the same graph from the table's name alone.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

METHODS = ("standard_ft", "seq_ft", "sit", "ewc", "si", "lwf", "replay")
RETAIN = {"ewc": "seq_ft", "si": "seq_ft", "lwf": "seq_ft", "replay": "seq_ft"}  # method -> its learning rates
RECORDED = ("ewc", "si")  # methods whose CochlScene run must leave fisher.pt / si.pt
SPLITS = (5, 10, 25, 50, 100)
SPEC_FILE = "table.json"
SUMMARY = "summary.json"  # what a finished run leaves (trainer.report)


@dataclass(frozen=True)
class TableSpec:
    """What the table compares and how every run of it is configured."""

    name: str  # the table's folder: <root>/<name>/
    methods: list[str] = field(default_factory=lambda: list(METHODS[:3]))  # of METHODS
    splits: list[int] = field(default_factory=lambda: list(SPLITS))  # TAU training splits (split<p>.csv), percent
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # train.seed of every run
    protocol: str = "project"  # project | reference (configs/protocol/reference/)
    overrides: list[str] = field(default_factory=list)  # key=value given to every run (after the table's own)
    demo: bool = False  # the built-in demo corpus and configs/demo overlays

    def check(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"--methods: {' '.join(unknown) or 'none given'}; choose from {' '.join(METHODS)}")
        bad = [s for s in self.splits if not 0 < s <= 100]
        if bad or not self.splits:
            raise ValueError(f"--splits: {bad or 'none given'}; TAU's lists are split5 split10 split25 split50 "
                             "split100")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct, got {self.seeds}")
        for o in self.overrides:
            key = o.split("=", 1)[0]
            if key in ("run.out", "run.name", "train.seed", "optim.method", "data.train_split", "protocol",
                       "retain.method", "retain.keep_head", "retain.record"):
                raise ValueError(f"override {o!r}: the table sets {key} for every run; use --name / --seeds / "
                                 "--methods / --splits / --protocol instead")


@dataclass(frozen=True)
class Run:
    """One training run of the table."""

    stage: str  # config stage: cochl | tau | standard_ft
    name: str  # run.name (unique within its stage)
    method: str  # the table's method (a CochlScene run: the learning rates it trains with, seq_ft or sit)
    seed: int
    split: int | None  # TAU training split in percent; None for a CochlScene run
    after: str | None  # the CochlScene run (name) whose model.pt it starts from

    def folder(self, runs: Path) -> Path:
        return runs / self.stage / self.name

    @property
    def optim_method(self) -> str:
        return RETAIN.get(self.method, self.method)


@dataclass(frozen=True)
class Group:
    """Runs submitted together (one SLURM array), after the group `after` succeeded."""

    name: str
    runs: tuple[Run, ...]
    after: str | None = None


class Table:
    """A spec and where it lives: `<root>/<name>/` holds table.json, the runs (runs/<stage>/<run>/), logs, results."""

    def __init__(self, spec: TableSpec, root: Path):
        spec.check()
        self.spec, self.folder = spec, Path(root).resolve() / spec.name
        self.runs_dir = self.folder / "runs"

    @classmethod
    def load(cls, root: Path, name: str) -> "Table":
        path = Path(root) / name / SPEC_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: no table named {name!r} under {root} (start it without "
                                    "--table-only / --task, or check --root)")
        return cls(TableSpec(**json.loads(path.read_text())), root)

    def save(self) -> None:
        """Write table.json; an existing table of this name must have the same spec (its runs would not fit)."""
        path = self.folder / SPEC_FILE
        spec = asdict(self.spec)
        if path.is_file():
            old = json.loads(path.read_text())
            if old != spec:
                changed = sorted(k for k in spec if old.get(k) != spec[k])
                raise ValueError(f"{path} was planned with other settings ({', '.join(changed)}); give this table "
                                 "another --name, or repeat the original settings to continue it")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(spec, indent=2) + "\n")

    def groups(self) -> list[Group]:
        """The run graph, seed by seed (a partial table has whole seeds), CochlScene before the TAU runs it feeds."""
        s, groups = self.spec, []
        for seed in s.seeds:
            for method in s.methods:
                if method == "standard_ft":
                    runs = tuple(Run("standard_ft", f"split{p}-seed{seed}", method, seed, p, None) for p in s.splits)
                    groups.append(Group(f"standard_ft-seed{seed}", runs))
                    continue
                base = RETAIN.get(method, method)
                cochl = Run("cochl", f"{base}-seed{seed}", base, seed, None, None)
                if not any(g.name == f"cochl-{base}-seed{seed}" for g in groups):  # shared by the methods on it
                    groups.append(Group(f"cochl-{base}-seed{seed}", (cochl,)))
                runs = tuple(Run("tau", f"{method}-split{p}-seed{seed}", method, seed, p, cochl.name) for p in s.splits)
                groups.append(Group(f"tau-{method}-seed{seed}", runs, after=f"cochl-{base}-seed{seed}"))
        return groups

    def runs(self) -> list[Run]:
        return [run for group in self.groups() for run in group.runs]

    def group(self, name: str) -> Group:
        found = [g for g in self.groups() if g.name == name]
        if not found:
            raise ValueError(f"table {self.spec.name!r} has no group {name!r}; groups: "
                             f"{', '.join(g.name for g in self.groups())}")
        return found[0]

    def done(self, run: Run) -> bool:
        return (run.folder(self.runs_dir) / SUMMARY).is_file()

    def arguments(self, run: Run) -> list[str]:
        """`launch/train.py` arguments of a run: --stage, --demo, the table's overrides, the user's, and for a TAU run
        of the chain its CochlScene model as init_from."""
        s = self.spec
        args = ["--stage", run.stage, *(["--demo"] if s.demo else []), f"protocol={s.protocol}",
                f"optim.method={run.optim_method}", f"train.seed={run.seed}", f"run.out={self.runs_dir}",
                f"run.name={run.name}", "run.resume=auto"]
        if run.split is not None:
            args.append(f"data.train_split=split{run.split}")
        if run.stage == "cochl" and any(RETAIN.get(m) == run.method for m in s.methods if m in RECORDED):
            args.append("retain.record=true")
        if run.after is not None:
            args += [f"retain.method={run.method if run.method in RETAIN else 'none'}", "retain.keep_head=true"]
        args += s.overrides  # a user's init_from= (the AudioSet checkpoint) is for the runs that start from it ...
        if run.after is not None:  # ... never for a TAU run of the chain: it starts from its CochlScene model
            args.append(f"init_from={self.runs_dir / 'cochl' / run.after / 'model.pt'}")
        return args

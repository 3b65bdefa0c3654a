"""Is this environment the tested stack?  The compiled pieces load together, the installed set equals a lock.

    python -m trainer.stack                                   # torch, torchaudio's library, DALI, DeepSpeed load
    python -m trainer.stack --lock requirements/lock-py3.12.txt    # ... and every package is at the lock's version
    python -m trainer.stack --check-locks                     # every lock agrees with pyproject.toml (CI)

Each fault is one line naming the packages and versions involved; the exit status is 1 when any was found.
A broken pair of compiled libraries (torchaudio 2.11.1's library built against a newer torch than 2.11.0, say)
otherwise shows up as an `undefined symbol` deep in the first import of torchaudio, once per test module.

The locks are `requirements/lock-py<X.Y>.txt`, written by `uv pip compile` (`make lock`): exact versions and
hashes of every package for Linux x86-64 and one Python version, with uv's `# via` annotations, from which
the packages that pyproject.toml asks for directly are read.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

PROJECT = "audio-sit"
LOCK_DIR = Path("requirements")
LOCK_NAME = re.compile(r"lock-py(\d+\.\d+)\.txt$")
# Installed beside the locked set by the installer itself: the package managers and this project.
TOOLING = {"pip", "uv", PROJECT}
# What the locks resolve for (uv's --python-platform x86_64-manylinux_2_28), to evaluate pyproject's markers.
LOCKED_PLATFORM = {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "os_name": "posix", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython"}


class StackError(RuntimeError):
    """The environment is not one the project runs in; the message says what to reinstall."""


def installed_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def release(version: str) -> tuple[int, ...]:
    """2.11.0+cu130 -> (2, 11, 0): the number torch and torchaudio releases share."""
    return Version(version).release


def release_text(version: str) -> str:
    return ".".join(map(str, release(version)))


# --- the compiled pieces ---------------------------------------------------------------------------------

def _load(module: str) -> str | None:
    """None when `module` imports; else the loader's complaint, on one line."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # an OSError (undefined symbol), ImportError, or whatever a broken build raises
        while exc.__cause__ is not None:  # torchaudio wraps the loader's own words ("undefined symbol: ...")
            exc = exc.__cause__
        return " ".join(f"{type(exc).__name__}: {exc}".split())
    return None


def load_faults(dali: bool | None = None) -> list[str]:
    """One line per compiled piece that does not load with this torch (empty when the stack is sound).

    `dali` None: DALI is checked where pyproject installs it (Linux).
    """
    torch_v = installed_version("torch")
    if torch_v is None:
        return ["torch is not installed: install the locked set (make test does; or see the README's Set-up)"]
    fault = _load("torch")
    if fault:
        return [f"torch {torch_v} does not load ({fault}): reinstall it from the lock"]
    faults = []
    audio_v = installed_version("torchaudio")
    if audio_v is None:
        faults.append(f"torchaudio is not installed beside torch {torch_v}: install torchaudio=={release_text(torch_v)}")
    else:
        fault = _load("torchaudio")
        if fault or release(audio_v) != release(torch_v):
            why = fault or "its releases pair with the torch release of the same number"
            pair = release_text(torch_v)
            faults.append(f"torchaudio {audio_v} does not load with torch {torch_v} ({why}): install the tested pair "
                          f"torch=={pair} torchaudio=={pair}, best the whole lock ({lock_for_this_python()})")
    others = [("deepspeed", "deepspeed")]
    if dali if dali is not None else sys.platform == "linux":
        others.insert(0, ("nvidia-dali-cuda130", "nvidia.dali.backend"))
    for name, module in others:
        version = installed_version(name)
        if version is None:
            faults.append(f"{name} is not installed beside torch {torch_v}: install the lock ({lock_for_this_python()})")
        elif fault := _load(module):
            faults.append(f"{name} {version} does not load beside torch {torch_v} ({fault})")
    return faults


# --- locks ---------------------------------------------------------------------------------------------

@dataclass
class Lock:
    """A `uv pip compile` output: exact pins, which of them pyproject asks for directly, and for which Python."""
    path: Path
    python: str
    pins: dict[str, str] = field(default_factory=dict)
    direct: set[str] = field(default_factory=set)
    extras: list[str] = field(default_factory=list)


def read_lock(path: Path) -> Lock:
    path = Path(path)
    name = LOCK_NAME.search(path.name)
    if not name:
        raise StackError(f"{path}: a lock is named lock-py<major>.<minor>.txt (the Python it was resolved for)")
    lock = Lock(path, name.group(1))
    current = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if line.startswith("#    uv pip compile"):
            lock.extras = re.findall(r"--extra[ =](\S+)", line)
            python = re.search(r"--python-version[ =](\S+)", line)
            if not python or python.group(1) != lock.python:
                raise StackError(f"{path}: resolved for Python {python.group(1) if python else '(unstated)'} "
                                 f"but named for {lock.python}: re-create it with `make lock`")
        elif line and not line[0].isspace() and not line.startswith("#"):
            pin = re.match(r"([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
            if not pin:
                raise StackError(f"{path}: '{line}' is not an exact pin (name==version)")
            current = canonicalize_name(pin.group(1))
            lock.pins[current] = pin.group(2)
        elif current and stripped.startswith("#") and f"{PROJECT} (pyproject.toml)" in stripped:
            lock.direct.add(current)  # uv's `# via` lines under a pin: one of them names pyproject
    return lock


def project_requirements(pyproject: Path, extras: list[str]) -> tuple[str, list[Requirement]]:
    """requires-python, and the requirements of the base install plus `extras` (self-references expanded)."""
    project = tomllib.loads(Path(pyproject).read_text())["project"]
    optional = project.get("optional-dependencies", {})
    requirements, seen, todo = [Requirement(r) for r in project["dependencies"]], set(), list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise StackError(f"{pyproject}: the lock asks for extra '{extra}', which [project.optional-dependencies] lacks")
        seen.add(extra)
        for text in optional[extra]:
            req = Requirement(text)
            if canonicalize_name(req.name) == PROJECT:
                todo.extend(req.extras)
            else:
                requirements.append(req)
    return project.get("requires-python", ""), requirements


def lock_faults(lock: Lock, pyproject: Path) -> list[str]:
    """Where the lock and pyproject disagree: a dependency in one and not the other, a pin outside its range."""
    requires_python, requirements = project_requirements(pyproject, lock.extras)
    faults = []
    if requires_python and not SpecifierSet(requires_python).contains(lock.python):
        faults.append(f"{lock.path}: Python {lock.python} is outside pyproject's requires-python {requires_python}")
    env = {**default_environment(), **LOCKED_PLATFORM, "python_version": lock.python,
           "python_full_version": f"{lock.python}.0"}
    wanted = {}
    for req in requirements:
        if req.marker is None or req.marker.evaluate(env):
            wanted.setdefault(canonicalize_name(req.name), []).append(req)
    for name, reqs in sorted(wanted.items()):
        pinned = lock.pins.get(name)
        if pinned is None:
            faults.append(f"{lock.path}: pyproject.toml asks for {reqs[0]}, the lock has no {name}: run `make lock`")
            continue
        for req in reqs:
            if not req.specifier.contains(pinned, prereleases=True):
                faults.append(f"{lock.path}: {name} {pinned} is outside pyproject.toml's {req}: run `make lock`")
    for name in sorted(lock.direct - set(wanted)):
        faults.append(f"{lock.path}: {name} {lock.pins[name]} is locked as a direct dependency that pyproject.toml "
                      "no longer asks for: run `make lock`")
    return faults


def install_faults(lock: Lock) -> list[str]:
    """Where the installed packages differ from the lock (local versions such as +cu130 match their release)."""
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in md.distributions()}
    faults = []
    for name, pinned in sorted(lock.pins.items()):
        have = installed.get(name)
        if have is None:
            faults.append(f"{name} {pinned} of {lock.path} is not installed")
        elif not SpecifierSet(f"=={pinned}").contains(have, prereleases=True):
            faults.append(f"{name} {have} is installed, {lock.path} has {pinned}")
    for name in sorted(set(installed) - set(lock.pins) - TOOLING):
        faults.append(f"{name} {installed[name]} is installed but not in {lock.path}")
    return faults


def lock_for_this_python(root: Path = Path(".")) -> Path:
    return root / LOCK_DIR / f"lock-py{sys.version_info.major}.{sys.version_info.minor}.txt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lock", type=Path, help="also compare the installed packages with this lock")
    parser.add_argument("--check-locks", action="store_true",
                        help="only compare every requirements/lock-py*.txt with pyproject.toml (nothing is imported)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the project folder (pyproject.toml, requirements/)")
    args = parser.parse_args(argv)
    try:
        if args.check_locks:
            locks = sorted((args.root / LOCK_DIR).glob("lock-py*.txt"))
            if not locks:
                raise StackError(f"no lock in {args.root / LOCK_DIR}: run `make lock`")
            faults = [f for path in locks for f in lock_faults(read_lock(path), args.root / "pyproject.toml")]
        else:
            faults = load_faults()
            if args.lock:
                faults += install_faults(read_lock(args.lock))
    except StackError as exc:
        faults = [str(exc)]
    for fault in faults:
        print(f"error: {fault}", file=sys.stderr)
    if not faults:
        what = "the locks agree with pyproject.toml" if args.check_locks else "the compiled pieces load together"
        print(f"stack: {what}" + (f"; installed = {args.lock}" if args.lock and not args.check_locks else ""))
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())

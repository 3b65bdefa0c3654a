"""The locked environment: the locks agree with pyproject.toml, and a broken compiled pair is named in one line."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import stack

from .helpers import REPO

LOCKS = sorted((REPO / "requirements").glob("lock-py*.txt"))
PYPROJECT = REPO / "pyproject.toml"


def edited_lock(tmp_path: Path, python: str = "3.11", name: str | None = None, **subs: str) -> Path:
    """A copy of a committed lock with regex substitutions (pattern -> replacement, in order)."""
    text = (REPO / "requirements" / f"lock-py{python}.txt").read_text()
    for pattern, replacement in subs.values():
        text, count = re.subn(pattern, replacement, text, flags=re.M)
        assert count, pattern
    path = tmp_path / (name or f"lock-py{python}.txt")
    path.write_text(text)
    return path


def test_every_lock_agrees_with_pyproject():
    """What CI checks: a lock for 3.11 (these machines), 3.12 (the GPU machines) and 3.13, each consistent."""
    assert {stack.read_lock(p).python for p in LOCKS} >= {"3.11", "3.12", "3.13"}
    for path in LOCKS:
        lock = stack.read_lock(path)
        assert lock.extras == ["test"]
        assert stack.lock_faults(lock, PYPROJECT) == []
        # the pair is pinned exactly and together, and the compiled pieces are all in the lock
        assert lock.pins["torch"] == lock.pins["torchaudio"] == "2.11.0"
        assert {"deepspeed", "nvidia-dali-cuda130", "torch", "torchaudio", "pytest"} <= lock.direct


def test_the_lock_names_direct_dependencies_from_uvs_annotations():
    lock = stack.read_lock(REPO / "requirements" / "lock-py3.11.txt")
    assert "tabulate" in lock.direct and "hear21passt" in lock.direct  # base and (via test) bench extra
    assert "cuda-bindings" not in lock.direct and "cuda-bindings" in lock.pins  # torch's, not ours
    assert lock.pins["deepspeed"] == "0.19.8"


def test_torchaudio_2_11_1_in_the_lock_is_refused_naming_both_versions(tmp_path):
    path = edited_lock(tmp_path, ta=(r"^torchaudio==2\.11\.0", "torchaudio==2.11.1"))
    faults = stack.lock_faults(stack.read_lock(path), PYPROJECT)
    assert faults == [f"{path}: torchaudio 2.11.1 is outside pyproject.toml's torchaudio==2.11.0: run `make lock`"]


def test_a_dependency_in_one_and_not_the_other_is_named(tmp_path):
    # pyproject asks for tabulate, the lock lost it
    path = edited_lock(tmp_path, tab=(r"^tabulate==.*\n(    .*\n)*", ""))
    faults = stack.lock_faults(stack.read_lock(path), PYPROJECT)
    assert len(faults) == 1 and "asks for tabulate" in faults[0] and "has no tabulate" in faults[0]
    # the lock holds a direct dependency that pyproject dropped
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(re.sub(r'^    "tqdm[^\n]*\n', "", PYPROJECT.read_text(), flags=re.M))
    lock = stack.read_lock(REPO / "requirements" / "lock-py3.11.txt")
    faults = stack.lock_faults(lock, pyproject)
    assert len(faults) == 1 and re.search(r"tqdm \S+ is locked as a direct dependency that pyproject.toml", faults[0])


def test_a_lock_for_the_wrong_python_is_refused(tmp_path):
    renamed = edited_lock(tmp_path, name="lock-py3.12.txt", noop=(r"^", ""))
    with pytest.raises(stack.StackError, match=r"resolved for Python 3\.11 but named for 3\.12"):
        stack.read_lock(renamed)
    old = edited_lock(tmp_path, name="lock-py3.10.txt", v=(r"--python-version 3\.11", "--python-version 3.10"))
    faults = stack.lock_faults(stack.read_lock(old), PYPROJECT)
    assert faults == [f"{old}: Python 3.10 is outside pyproject's requires-python >=3.11"]


def test_installed_packages_are_compared_with_the_lock(tmp_path):
    """The check `make` runs after installing: a wrong version, a missing and an extra package are each named."""
    torch_v = stack.installed_version("torch")
    base = stack.release_text(torch_v)
    lock = tmp_path / f"lock-py{sys.version_info.major}.{sys.version_info.minor}.txt"
    lock.write_text(f"#    uv pip compile pyproject.toml --python-version {sys.version_info.major}.{sys.version_info.minor}\n"
                    f"torch=={base}\n    # via audio-sit (pyproject.toml)\n"
                    "torchaudio==2.11.1\nno-such-package==1.0\n")
    faults = stack.install_faults(stack.read_lock(lock))
    assert not any(f.startswith("torch ") for f in faults)  # +cu130 builds match their release
    assert f"torchaudio {stack.installed_version('torchaudio')} is installed, {lock} has 2.11.1" in faults
    assert f"no-such-package 1.0 of {lock} is not installed" in faults
    assert any(re.match(r"numpy \S+ is installed but not in ", f) for f in faults)
    assert not any(f.startswith(("pip ", "uv ", "audio-sit ")) for f in faults)


def test_this_environment_loads_its_compiled_pieces():
    assert stack.load_faults() == []


def fake_torchaudio(tmp_path: Path, version: str) -> dict[str, str]:
    """An environment where torchaudio `version` fails to load as the real 2.11.1 does beside torch 2.11.0."""
    site = tmp_path / "site"
    (site / "torchaudio").mkdir(parents=True)
    (site / "torchaudio" / "__init__.py").write_text(
        "raise OSError('/site-packages/torchaudio/lib/libtorchaudio.so: undefined symbol: "
        "torch_exception_get_what_without_backtrace')\n")
    info = site / f"torchaudio-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torchaudio\nVersion: {version}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_an_abi_mismatch_fails_in_one_line_naming_both_versions(tmp_path):
    env = fake_torchaudio(tmp_path, "2.11.1")
    run = subprocess.run([sys.executable, "-m", "trainer.stack"], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    torch_v = stack.installed_version("torch")
    assert len(errors) == 1, run.stderr
    assert errors[0].startswith(f"error: torchaudio 2.11.1 does not load with torch {torch_v} (OSError: ")
    assert "undefined symbol: torch_exception_get_what_without_backtrace" in errors[0]
    assert "Traceback" not in run.stderr


def test_pytest_stops_before_collecting_when_the_stack_is_broken(tmp_path):
    """One line and exit 3, instead of one collection error per test module that imports torchaudio."""
    env = fake_torchaudio(tmp_path, "2.11.1")
    tests = tmp_path / "tests"
    shutil.copytree(REPO / "tests", tests, ignore=shutil.ignore_patterns("test_*.py", "__pycache__"))
    (tests / "test_a.py").write_text("import torchaudio\n\ndef test_a():\n    pass\n")
    (tests / "test_b.py").write_text("import torchaudio\n\ndef test_b():\n    pass\n")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 3, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "the installed stack is broken: torchaudio 2.11.1 does not load with torch" in out
    assert "ERROR" not in out and "collected" not in out and "test_a" not in out


def test_the_readme_says_what_the_install_resolves_to():
    """The README's version table equals the locks, cell by cell (so `make lock` cannot leave it stale)."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("What the install resolves to"):].split("\n\n")[1].splitlines()
    pythons = [cell.split()[-1] for cell in table[0].strip("|").split("|")[1:]]
    locks = {p: stack.read_lock(REPO / "requirements" / f"lock-py{p}.txt") for p in pythons}
    assert set(pythons) == {stack.read_lock(p).python for p in LOCKS}
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table[2:]]
    assert len(rows) >= 8
    for package, *versions in rows:
        name = package.split()[0]
        assert versions == [locks[p].pins[name] for p in pythons], name

"""The test suite on this machine, in parallel, for gpu.py's results file: pass / fail counts and the failing ids.

    python benchmarks/gpu_suite.py --workers 14 --timeout 400        # alone; gpu.py runs it as its `suite` section

A GPU machine shows what CI (no GPU) cannot: pinned-memory batches, NCCL groups, DALI's GPU pipeline, the `gpu`
tests.  The suite runs under pytest-xdist with a JUnit report; at the timeout pytest gets SIGINT, so the tests that
finished are still counted and the report says which ran out of time.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUTCOMES = ("passed", "failed", "error", "skipped")
# pytest with SIGINT raising KeyboardInterrupt whatever this process inherited: a shell's background job (`cmd &`
# without job control) ignores SIGINT, and an ignored SIGINT stays ignored in every child (a test run from one
# waited 120 s for a sleeping test instead of stopping at the time limit)
INTERRUPTIBLE_PYTEST = ("import signal, sys, pytest; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "sys.exit(pytest.main(sys.argv[1:]))")


def test_id(case: ET.Element) -> str:
    """tests.test_train + test_x[1] -> tests/test_train.py::test_x[1] (what pytest accepts back)."""
    parts = case.get("classname", "").split(".")
    module = next((i for i, part in enumerate(parts) if part.startswith("Test")), len(parts))  # tests.test_x.TestY
    return "::".join(["/".join(parts[:module]) + ".py", *parts[module:], case.get("name", "?")])


def parse_junit(path: Path) -> dict:
    """Counts and the ids of failed, erroring and skipped tests (with the first line of why)."""
    root = ET.parse(path).getroot()
    outcome = {key: [] for key in OUTCOMES}
    for case in root.iter("testcase"):
        if case.get("name") is None:  # the test an interruption cut short leaves a nameless entry
            continue
        for kind, key in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            found = case.find(kind)
            if found is not None:
                why = (found.get("message") or found.text or "").strip().splitlines()
                outcome[key].append((test_id(case), why[0][:200] if why else ""))
                break
        else:
            outcome["passed"].append((test_id(case), ""))
    return outcome


def run_suite(workers: int, timeout: float, work: Path, paths: list[str] = ()) -> dict:
    """The suite (or `paths`) with `-n workers`; {passed, failed, error, skipped, wall_s, timed_out, log, command}."""
    if importlib.util.find_spec("xdist") is None:
        raise RuntimeError("the suite runs under pytest-xdist (pyproject's addopts say -n auto), which is not installed "
                           "here: pip install pytest-xdist execnet (both pure Python; stage them with the other wheels)")
    work.mkdir(parents=True, exist_ok=True)
    report, log = work / "suite.xml", work / "suite.log"
    command = [sys.executable, "-c", INTERRUPTIBLE_PYTEST, "-q", "-p", "no:cacheprovider", "-n", str(workers), "-rfE",
               "--tb=line", f"--junitxml={report}", *paths]
    started = time.perf_counter()
    timed_out = False
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            # to the whole group: xdist's workers stop too, a test in progress with them (signalled alone, the
            # controller waits for the running tests to end); pytest reports what finished in the JUnit file
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    result = parse_junit(report) if report.is_file() else {key: [] for key in OUTCOMES}
    shown = ["-m", "pytest", *command[3:]]  # what the bootstrap runs, as one would type it
    result.update(wall_s=time.perf_counter() - started, timed_out=timed_out, returncode=proc.returncode, log=str(log),
                  command=" ".join(shown).replace(str(report), "suite.xml"))
    if not report.is_file():
        result["error"].append(("(no JUnit report)", log.read_text()[-300:].strip().replace("\n", " | ")))
    return result


def markdown(result: dict, device: str, heading: str = "#", intro: str = "") -> str:
    counts = ", ".join(f"{len(result[k])} {k}" for k in OUTCOMES)
    lines = [f"{heading} The test suite on {device}", "", *([intro, ""] if intro else []),
             f"`python {result['command']}`: **{counts}** in {result['wall_s']:.0f} s"
             + (" (**stopped at the time limit**: the tests not listed did not run)" if result["timed_out"] else "")
             + f", exit status {result['returncode']}.", ""]
    for kind in ("failed", "error", "skipped"):
        if result[kind]:
            lines += [f"{kind.capitalize()}:", ""] + [f"- `{tid}`: {why}" for tid, why in result[kind]] + [""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=max(1, len(os.sched_getaffinity(0)) - 2))
    ap.add_argument("--timeout", type=float, default=540.0, help="seconds; then the tests that finished are reported")
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_suite"))
    ap.add_argument("paths", nargs="*", help="test files or ids (default: the whole suite)")
    args = ap.parse_args()
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "the CPU"
    result = run_suite(args.workers, args.timeout, args.work, args.paths)
    print(markdown(result, device, intro=f"Measured {time.strftime('%Y-%m-%d')}."))
    sys.exit(0 if not (result["failed"] or result["error"] or result["timed_out"]) else 1)


if __name__ == "__main__":
    main()

"""Run one fuzz target for a while and say what it did: an atheris target, or the native one (fastpath).

    python -m fuzz.run psample --seconds 600
    python -m fuzz.run config --runs 5000
    python -m fuzz.run control --seconds 60 --work /tmp/fz

The corpus persists in WORK/corpus (default .cache/fuzz/TARGET), seeded from
the target's seeds(); a crashing input is written to WORK/crashes/ and the run
exits non-zero.  Each input has --timeout seconds before it counts as a hang.
The last line is the summary: target, inputs executed, seconds, crashes.
"""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TARGETS = {
    "psample": "fuzz.psample_target",
    "config": "fuzz.config_target",
    "control": "fuzz.control_target",
    "fastpath": "fuzz.fastpath_target",  # native: libFuzzer + ASan + UBSan over the compiled loop's C core
}
# bytes of one input: a psample read holds a 64 KiB message and more; config files and requests stay small
MAX_LEN = {"psample": 70000, "config": 16384, "control": 9000, "fastpath": 70000}
REPO = Path(__file__).resolve().parent.parent
_EXECUTED = re.compile(r"stat::number_of_executed_units:\s*(\d+)")
_DONE = re.compile(r"Done (\d+) runs")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


@dataclass(frozen=True)
class Result:
    target: str
    runs: int
    seconds: float
    returncode: int
    artifacts: tuple[str, ...]

    @property
    def crashed(self) -> bool:
        return self.returncode != 0 or bool(self.artifacts)

    def summary(self) -> str:
        outcome = f"CRASH, inputs in {', '.join(self.artifacts) or '(none written)'}" if self.crashed else "no crash"
        return f"{self.target}: {self.runs} inputs in {self.seconds:.0f} s, {outcome}"


def prepare(module: str, work: Path) -> tuple[Path, Path]:
    """The corpus (seeded when new) and crash directories under work."""
    corpus, crashes = work / "corpus", work / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    if not corpus.is_dir() or not any(corpus.iterdir()):
        corpus.mkdir(parents=True, exist_ok=True)
        for index, seed in enumerate(importlib.import_module(module).seeds()):
            (corpus / f"seed-{index}").write_bytes(seed)
    return corpus, crashes


def command(module: str, corpus: Path, crashes: Path, max_len: int, timeout: int, seconds: int | None,
            runs: int | None) -> list[str]:
    argv = [sys.executable, "-m", "fuzz.launch", module, str(corpus), f"-artifact_prefix={crashes}/", f"-max_len={max_len}",
            f"-timeout={timeout}", "-print_final_stats=1", "-rss_limit_mb=4096"]
    if seconds is not None:
        argv.append(f"-max_total_time={seconds}")
    if runs is not None:
        argv.append(f"-runs={runs}")
    return argv


def parse_output(target: str, text: str, returncode: int, seconds: float) -> Result:
    found = _EXECUTED.findall(text) or _DONE.findall(text)
    return Result(target, int(found[-1]) if found else 0, seconds, returncode, tuple(_ARTIFACT.findall(text)))


def run(target: str, seconds: int | None = None, runs: int | None = None, work: Path | None = None,
        timeout: int = 10, log: Path | None = None) -> Result:
    """Run target (a name from TARGETS or a module path) until seconds or runs run out."""
    module = TARGETS.get(target, target)
    work = work or REPO / ".cache" / "fuzz" / target
    corpus, crashes = prepare(module, work)
    argv = command(module, corpus, crashes, MAX_LEN.get(target, 4096), timeout, seconds, runs)
    build = getattr(importlib.import_module(module), "build", None)
    if build is not None:  # a native target: its own libFuzzer binary instead of atheris's launcher
        argv = [str(build(work)), *argv[argv.index(str(corpus)):]]
    log = log or work / "last-run.log"
    started = time.monotonic()
    with open(log, "w") as out:
        done = subprocess.run(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                              check=False)
    return parse_output(target, log.read_text(errors="replace"), done.returncode, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help=f"one of {', '.join(TARGETS)} (or a module path)")
    limit = parser.add_mutually_exclusive_group(required=True)
    limit.add_argument("--seconds", type=int, help="run this long")
    limit.add_argument("--runs", type=int, help="run this many inputs")
    parser.add_argument("--work", type=Path, help="corpus and crashes directory (default .cache/fuzz/TARGET)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it is a hang")
    args = parser.parse_args(argv)
    result = run(args.target, args.seconds, args.runs, args.work, args.timeout)
    print(result.summary())
    return 1 if result.crashed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Boot Debian's kernel under qemu (TCG) with virtme-ng and run one program in it.

The host kernel has no psample, act_sample or cls_matchall, so the tests that
need the real kernel path run inside a throwaway VM.  virtme-ng (``vng``)
boots the kernel fetched by ``tools/setup-test-env`` with the host's root
filesystem shared read-only into the guest, so the repository and its
``.venv`` work unchanged inside.

Facts this module is built around (measured on this project's machines):

* ``vng`` does not hand the guest program's exit status back (no udev in the
  guest, so the virtio-serial "ret" port is never found and vng exits 255).
  The generated guest script therefore writes the status into ``rwdir``.
* Without ``--force-9p`` vng first waits several seconds for a virtiofsd that
  Debian bookworm does not ship; forcing 9p saves about 6 s per boot.
* virtme's 9p mounts use ``cache=none``: every ``stat`` is a round trip to
  qemu, ~2-4 ms under TCG, which made ``import pyroute2`` take 10-50 s.  The
  harness adds a second 9p export of ``/`` and the guest script mounts it
  with ``cache=loose`` over the repository and the Python installation
  (read-only there), which brings the same imports down to a few seconds.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# tests/vm/harness.py -> repository root
REPO_ROOT: Path = Path(__file__).resolve().parents[2]

# Written into rwdir by the guest script; the names are part of the API so
# callers can tell the harness's files from their own.
EXIT_STATUS_FILE = "exit_status"
BOOT_UPTIME_FILE = "boot_uptime"
CONSOLE_LOG_FILE = "console.log"
GUEST_SCRIPT_FILE = "guest.sh"

# 9p tag of the extra, cacheable export of the host root.
_CACHE_TAG = "hvcache"
# Top-level host directories never covered with the cached read-only view:
# virtme already gives the guest writable overlays or its own mounts there.
_NO_CACHE_TOPS = frozenset(
    {"", "usr", "etc", "var", "lib", "lib64", "bin", "sbin", "tmp", "run", "proc", "sys", "dev", "home", "opt", "srv"}
)
_TAIL_LINES = 60


class GuestError(RuntimeError):
    """The VM could not run the program to completion."""


class GuestTimeout(GuestError):
    """The VM did not finish within the timeout; qemu was killed."""


class KernelNotFound(FileNotFoundError):
    """No test kernel was fetched yet."""


@dataclass(frozen=True)
class GuestRun:
    """Outcome of one boot."""

    console: str  # everything vng and the guest console printed
    elapsed: float  # host wall-clock seconds, vng start to exit
    exit_status: int  # exit status of argv inside the guest
    boot_seconds: float | None  # guest uptime when the guest script started
    vng_returncode: int  # vng's own exit code (255 even on success: not meaningful)
    rwdir: Path

    def console_tail(self, lines: int = _TAIL_LINES) -> str:
        return _tail(self.console, lines)


def kernel_path(repo_root: Path = REPO_ROOT) -> Path:
    """Return the real path of the vmlinuz fetched by tools/setup-test-env.

    The path is resolved on purpose: virtme finds the kernel's modules by
    walking up from the image's own location to ``lib/modules``; handed the
    ``.cache/vm/kernel`` symlink it would look in the host's /lib/modules and
    boot without psample.
    """
    link = Path(repo_root) / ".cache" / "vm" / "kernel"
    target = link.resolve()
    if not target.is_file():
        raise KernelNotFound(
            f"no test kernel at {link}: run tools/setup-test-env first "
            "(it fetches Debian's linux-image package into .cache/vm/)"
        )
    return target


def find_vng() -> Path:
    """vng from the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / "vng"
    if beside.is_file():
        return beside
    found = shutil.which("vng")
    if found is None:
        raise GuestError("vng (virtme-ng) not found: run tools/setup-test-env")
    return Path(found)


def default_cached_dirs(repo_root: Path = REPO_ROOT) -> list[Path]:
    """The repository and the Python installation(s) the tests run from."""
    return [Path(repo_root), Path(sys.prefix), Path(sys.base_prefix)]


def run_guest(
    argv: Sequence[str],
    rwdir: Path,
    timeout: float,
    env: Mapping[str, str] | None = None,
    *,
    repo_root: Path = REPO_ROOT,
    cwd: Path | None = None,
    kernel: Path | None = None,
    memory: str = "2G",
    cpus: int = 2,
    cached_dirs: Sequence[Path] | None = None,
) -> GuestRun:
    """Boot the test kernel once, run ``argv`` as root in it, return the outcome.

    ``rwdir`` is created if needed and is writable in the guest at the same
    path; the guest's other view of the host is read-only (writes elsewhere
    land in throwaway overlays).  The directories in ``cached_dirs`` (default:
    the repository and the Python installations) are seen through a cached
    read-only 9p mount: fast, but blind to host changes made during the run.
    ``env`` is added to the guest program's environment.  Raises GuestTimeout
    after ``timeout`` seconds (qemu's whole process group is killed) and
    GuestError when the guest did not report an exit status; both messages
    end with the tail of the console log.
    """
    repo_root = Path(repo_root).resolve()
    rwdir = Path(rwdir).resolve()
    rwdir.mkdir(parents=True, exist_ok=True)
    kernel = kernel_path(repo_root) if kernel is None else Path(kernel).resolve()
    vng = find_vng()
    dirs = _cacheable(default_cached_dirs(repo_root) if cached_dirs is None else cached_dirs)

    # Stale results from an earlier run in the same rwdir must not be mistaken
    # for this run's.
    for name in (EXIT_STATUS_FILE, BOOT_UPTIME_FILE):
        (rwdir / name).unlink(missing_ok=True)
    script = rwdir / GUEST_SCRIPT_FILE
    script.write_text(_guest_script(argv, rwdir, cwd or repo_root, env or {}, dirs))

    cmd = [
        str(vng),
        "--run", str(kernel),
        "--disable-kvm",  # the host's KVM cannot boot ordinary kernels
        "--disable-microvm",  # the extra virtio-9p-pci device needs a PCI machine
        "--force-9p",  # skips the wait for a virtiofsd that is not there
        "--user", "root",
        "--cpus", str(cpus),
        "--memory", memory,
        "--rwdir", str(rwdir),
        "--verbose",  # without it the guest program's output never shows
        # "=" form: argparse takes a separate value starting with "-" for an option.
        f"--qemu-opts=-fsdev local,id={_CACHE_TAG},path=/,security_model=none,readonly=on,multidevs=remap "
        f"-device virtio-9p-pci,fsdev={_CACHE_TAG},mount_tag={_CACHE_TAG}",
        # Kept short: --exec travels on the kernel command line (2 KiB max).
        "--exec", f"bash {shlex.quote(str(script))}",
    ]
    host_env = dict(os.environ)
    # vng runs virtme-run, which lives beside it.
    host_env["PATH"] = f"{vng.parent}{os.pathsep}{host_env.get('PATH', '')}"

    log_path = rwdir / CONSOLE_LOG_FILE
    start = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=repo_root,  # vng makes the guest start in the same directory
            env=host_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so qemu and vng can be killed as one group
        )
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise GuestTimeout(
                f"guest did not finish within {timeout:.0f} s; killed qemu\n"
                f"--- console tail ({log_path}) ---\n{_tail(_read(log_path))}"
            ) from None
        finally:
            if proc.poll() is None:  # interrupted (e.g. Ctrl-C): leave no qemu behind
                _kill_group(proc)
    elapsed = time.monotonic() - start
    console = _read(log_path)

    status_file = rwdir / EXIT_STATUS_FILE
    try:
        exit_status = int(status_file.read_text().strip())
    except (OSError, ValueError) as exc:
        raise GuestError(
            f"guest wrote no exit status ({exc}); vng exited {returncode} after {elapsed:.1f} s\n"
            f"--- console tail ({log_path}) ---\n{_tail(console)}"
        ) from None
    return GuestRun(
        console=console,
        elapsed=elapsed,
        exit_status=exit_status,
        boot_seconds=_read_float(rwdir / BOOT_UPTIME_FILE),
        vng_returncode=returncode,
        rwdir=rwdir,
    )


def _guest_script(
    argv: Sequence[str], rwdir: Path, cwd: Path, env: Mapping[str, str], cached: Sequence[Path]
) -> str:
    q = shlex.quote
    rw = q(str(rwdir))
    lines = [
        "#!/bin/bash",
        "# Generated by tests/vm/harness.py; runs inside the test VM.",
        f"read -r up _ < /proc/uptime; echo \"$up\" > {rw}/{BOOT_UPTIME_FILE}",
        'echo "hv-guest: script start at uptime $up"',
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1",
    ]
    if cached:
        # Covering a directory that holds rwdir would hide the writable
        # mount: keep a handle on it and put it back on top afterwards.
        rw_hidden = any(_is_under(rwdir, d) for d in cached)
        lines += [
            "mkdir -p /run/hv/cache /run/hv/rw",
            "if mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=512000"
            f" {_CACHE_TAG} /run/hv/cache; then",
        ]
        if rw_hidden:
            lines.append(f"  mount --bind {rw} /run/hv/rw")
        for d in cached:
            lines.append(
                f"  mount --bind {q('/run/hv/cache' + str(d))} {q(str(d))}"
                f" || echo 'hv-guest: warning: no cached view of {d}'"
            )
        if rw_hidden:
            lines.append(f"  mount --bind /run/hv/rw {rw}")
        lines += ["else", "  echo 'hv-guest: warning: cached 9p mount failed; running uncached'", "fi"]
    lines += [f"export {q(k)}={q(v)}" for k, v in env.items()]
    lines += [
        # A failed cd still reports a status (1) instead of none.
        f"cd {q(str(cwd))} && {' '.join(q(a) for a in argv)}",
        "rc=$?",
        'echo "hv-guest: program exited with status $rc"',
        # Written last and renamed, so a present file always holds a whole number.
        f'echo "$rc" > {rw}/{EXIT_STATUS_FILE}.tmp && mv {rw}/{EXIT_STATUS_FILE}.tmp {rw}/{EXIT_STATUS_FILE}',
        "sync",
        "",
    ]
    return "\n".join(lines)


def _cacheable(dirs: Sequence[Path]) -> list[Path]:
    """Existing absolute directories, outermost only, none under system trees."""
    out: list[Path] = []
    for d in sorted({Path(p).resolve() for p in dirs}, key=lambda p: len(p.parts)):
        if not d.is_dir() or (d.parts[1] if len(d.parts) > 1 else "") in _NO_CACHE_TOPS:
            continue
        if not any(_is_under(d, o) for o in out):
            out.append(d)
    return out


def _is_under(path: Path, top: Path) -> bool:
    return path == top or top in path.parents


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _read_float(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _tail(text: str, lines: int = _TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])

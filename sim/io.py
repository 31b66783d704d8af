"""A run folder's files, and how they are written: every file goes to a temporary name in the
same folder and is moved into place, so a run stopped at any moment (Ctrl-C, a killed job)
leaves either the previous or the new version, never half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

CONFIG_FILE = "config.yaml"  # the resolved configuration (written once at the start)
METRICS_FILE = "metrics.csv"  # one row per finished round (sim.reporting.RoundRecord)
SUMMARY_FILE = "summary.json"  # headline numbers, once the last round is done
PLOT_FILE = "accuracy.png"  # accuracies per round, once the last round is done
ATTACK_EFFECT_PLOT_FILE = "attack_effect.png"  # with metrics.attack_effect, once the last round is done
CHECKPOINT_FILE = "checkpoint.pt"  # what a resumed run continues from (sim.state)
MANIFEST_FILE = "manifest.json"  # written last: the finished run's files and their digests (sim.manifest)
COMPARE_INPUT_FILE = "compare-input.yaml"  # a comparison's settings, variants and seeds, as a --config file


def _file_mode() -> int:
    # Temporary files are created owner-only; results get the mode a plain open() would give.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write `data` to `path` through a temporary file in the same folder and `os.replace`."""
    path = Path(path)
    payload = data.encode() if isinstance(data, str) else data
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(payload)
            tmp.flush()
            os.fsync(tmp.fileno())
            os.chmod(tmp.name, _FILE_MODE)
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)



class FolderLock:
    """An exclusive lock on an output folder (a run, a comparison or a sweep), so that two
    processes never write one folder.

    It is `flock` on the folder itself (no file is created for it): the OS drops it when the
    holding process ends, however it ends (kill -9 included), so a stopped run never leaves a
    stale lock, and a refused writer changes nothing in the folder. A refused writer names the
    holder's PID and start time (read from /proc on Linux). Use it as a context manager around all
    the reading and writing of a command; a second writer is refused at `__enter__` with a
    ConfigError, before it has read or written anything else.
    """

    _held: dict[str, "FolderLock"] = {}  # folders this process holds, by resolved path

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None
        self._nested = False
        self._key = str(self.folder.resolve())

    def __enter__(self) -> "FolderLock":
        import fcntl

        from sim.errors import ConfigError

        if self._key in FolderLock._held:  # this process holds it already (a report inside a sweep)
            self._nested = True
            return self
        try:
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        except NotADirectoryError:
            raise ConfigError(f"{self.folder} exists and is not a folder; fix: choose another --out") from None
        except OSError as error:
            raise ConfigError(f"cannot open {self.folder}: {os_error_text(error, self.folder)}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.folder} is being written by another process ({holder}); two processes never write one "
                f"{self.what} folder; nothing was changed; fix: wait for that process to end (or stop it and "
                "pass --resume), or choose another --out"
            ) from None
        self._fd = fd
        FolderLock._held[self._key] = self
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self._nested:
            self._nested = False
        elif self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
            FolderLock._held.pop(self._key, None)


def lock_holder(fd: int) -> str:
    """'PID n, started <UTC time>' of the process holding a flock on the file `fd` (Linux), or a
    plain phrase where /proc does not tell."""
    import datetime

    try:
        info = os.fstat(fd)
        inode = f":{info.st_ino} "
        pid = None
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
                if len(fields) >= 6 and fields[1] == "FLOCK" and (fields[5] + " ").endswith(inode):
                    pid = int(fields[4])
                    break
        if not pid:
            return "its PID is not visible from here"
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks = int(stat[19])  # field 22: start time in clock ticks after boot
        boot = next(int(line.split()[1]) for line in open("/proc/stat") if line.startswith("btime"))
        started = datetime.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), datetime.timezone.utc)
        return f"PID {pid}, started {started:%Y-%m-%d %H:%M:%S} UTC"
    except (OSError, ValueError, IndexError, StopIteration):
        return "its PID is not visible from here"


def lock_folder(folder: str | Path, what: str = "folder", create: bool = True) -> FolderLock:
    """`FolderLock(folder)` acquired (release it, or use it in a `with`); with `create`, `folder`
    (and its parents) is made first where it is missing."""
    folder = Path(folder)
    if create:
        make_folder(folder)
    return FolderLock(folder, what).__enter__()


def make_folder(folder: Path) -> None:
    from sim.errors import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{folder} exists and is not a folder; fix: choose another --out") from None
    except OSError as error:
        raise ConfigError(f"cannot create {folder}: {os_error_text(error, folder)}") from None


def os_error_text(error: OSError, path: str | Path | None = None) -> str:
    """One line for an OS error on an output path: what failed, on which file, and the fix."""
    import errno

    where = path or error.filename or "an output file"
    fixes = {
        errno.ENOSPC: "the disk is full; fix: free space (df -h shows it), then run again with --resume",
        errno.EDQUOT: "the disk quota is used up; fix: free space, then run again with --resume",
        errno.EROFS: "the file system is read-only; fix: choose an --out on a writable disk",
        errno.EACCES: "permission denied; fix: choose an --out you may write to",
        errno.EPERM: "operation not permitted; fix: choose an --out you may write to",
        errno.ENAMETOOLONG: "the name is longer than the file system allows; fix: choose a shorter --out or "
                            "shorter names",
        errno.ENOTDIR: "a part of the path is a file, not a folder; fix: choose another --out",
        errno.EISDIR: "a folder stands where a file must be written; fix: remove it or choose another --out",
    }
    return f"{where}: {fixes.get(error.errno, f'{error.strerror or error} (errno {error.errno})')}"


def inside(base: str | Path, relative: object, where: str) -> Path:
    """`base / relative` where `relative` (read from `where`, a file in `base`) names a path
    inside `base`; a ConfigError for anything else (an absolute path, '..', a link that leads out),
    so a reader never follows a results file to write or read elsewhere."""
    from sim.errors import ConfigError

    base = Path(base)
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute():
        raise ConfigError(f"{where} names the folder {relative!r}, which is not a relative path inside {base}; "
                          "nothing was read or written; fix: restore that file from a copy")
    path = base / relative
    if not _lies_within(base, path) or ".." in Path(relative).parts:
        raise ConfigError(f"{where} names the folder {relative!r}, which leads outside {base}; nothing was read or "
                          "written; fix: restore that file from a copy")
    return path


def _lies_within(base: Path, path: Path) -> bool:
    """Whether `path`, its links followed, lies inside `base` (links followed too)."""
    return path.resolve().is_relative_to(base.resolve())


def check_within(base: str | Path, folders: Iterable[str | Path]) -> None:
    """Refuse, before anything runs, a run folder under `base` that a link (the folder itself or
    one above it) leads outside `base`: a run would otherwise write into whatever it points at."""
    from sim.errors import ConfigError

    base = Path(base)
    for folder in folders:
        path = base / folder
        if not _lies_within(base, path):
            raise ConfigError(f"{path} leads outside {base} (a link to {path.resolve()}); a run folder must lie inside "
                              "it; nothing was run or written; fix: remove the link, or choose another --out")


def read_json_file(path: Path, what: str, fix: str) -> object:
    """The JSON in `path` (`what` it should hold); a one-line ConfigError where it cannot be read."""
    import json

    from sim.errors import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) else f"not valid JSON ({type(error).__name__})"
        raise ConfigError(f"{path} cannot be read as {what}: {reason}; fix: {fix}") from None


def check_names(path: str | Path, longest_file: str = CHECKPOINT_FILE) -> None:
    """Refuse an output path whose names the file system cannot hold, before anything is written:
    each part at most NAME_MAX bytes (a temporary file's name adds a prefix and a suffix to
    `longest_file`'s), the whole at most PATH_MAX."""
    from sim.errors import ConfigError

    path = Path(path)
    existing = next((p for p in [path, *path.parents] if p.exists()), Path("."))
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
        path_max = os.pathconf(existing, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    for part in path.parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(f"the folder name {part[:60]}... ({len(os.fsencode(part))} bytes) is longer than the "
                              f"{name_max} bytes the file system allows; nothing was written; fix: choose a shorter "
                              "--out (or shorter labels or levels)")
    temporary = f".{longest_file}.abcdefgh.tmp"
    full = len(os.fsencode(str(path.resolve() / temporary)))
    if full > path_max:
        raise ConfigError(f"{path} is {full} bytes long with its files, more than the {path_max} the file system "
                          "allows; nothing was written; fix: choose a shorter --out")

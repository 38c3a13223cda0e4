"""The score records of an output folder: their schema and keys, appending them whole,
reading and repairing them, each measurement once, and the folder's lock.

Used by ``evaluate`` and the benchmark alike, so that both resume a killed run. A record
is one JSON object per line::

    {"table": ..., "method": ..., "item": ..., "key": {...}, "scores": {...}}

``key`` holds everything the scores depend on (the run's fingerprint, the method and its
options, the layer, the image and its content hash); a record whose key is in the folder
is not computed again. Records written before keys existed ("legacy") have ``table``,
``method`` and ``item`` only and are matched by those.

Files are written whole or not at all: a record's line is appended in one piece and cut
back if the disk fills mid-line; JSON, markdown, figures and maps go through a temporary
file and a rename. Only the standard library is imported.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captum_fdcam.errors import OutputError, RequestError

#: The benchmark's shards: one per ``torchrun`` rank.
SHARDS = "scores-rank*.jsonl"
#: The lock file of a writer (per rank, so that a run's ranks write side by side).
LOCK = ".captum-fdcam-rank{rank}.lock"


def identity(key: Any) -> str:
    """The key as one canonical string (sorted, compact JSON): what "the same key" means."""
    return json.dumps(key, sort_keys=True, separators=(",", ":"))


def parse(line: str) -> dict[str, Any] | None:
    """The record on a line, or None for a line that is not a whole record."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("scores"), dict):
        return None
    if not all(isinstance(record.get(k), str) for k in ("table", "method", "item")):
        return None
    if "key" in record and not isinstance(record["key"], dict):
        return None
    return record


def shard_rank(path: Path) -> int:
    """The rank of a benchmark shard ``scores-rank<r>.jsonl`` (0 for other names)."""
    match = re.fullmatch(r"scores-rank(\d+)", path.stem)
    return int(match.group(1)) if match else 0


def shards(out: Path, pattern: str = SHARDS) -> list[Path]:
    """The record files of ``out`` matching ``pattern``, by rank, then name."""
    return sorted(out.glob(pattern), key=lambda p: (shard_rank(p), p.name))


@dataclass
class Scores:
    """The records of an output folder, each measurement once.

    Records are read file by file, line by line; of records with the same key the first
    one read is kept. Legacy records (no key) are matched by table, method and item.
    """

    records: list[dict[str, Any]] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    legacy: set[tuple[str, str, str]] = field(default_factory=set)
    duplicates: int = 0
    #: "file line n" of each line that is not a whole record
    dropped: list[str] = field(default_factory=list)


def read_scores(out: Path, pattern: str = SHARDS) -> Scores:
    """Every record of ``out``'s files matching ``pattern``, deduplicated by key."""
    scores = Scores()
    kept: set[tuple[str, str, str]] = set()
    for shard in shards(out, pattern):
        for number, line in enumerate(shard.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            record = parse(line)
            if record is None:
                scores.dropped.append(f"{shard} line {number}")
                continue
            triple = (record["table"], record["method"], record["item"])
            if "key" in record:
                key = identity(record["key"])
                if key in scores.keys or triple in scores.legacy:
                    scores.duplicates += 1
                    continue
                scores.keys.add(key)
            else:
                if triple in kept:
                    scores.duplicates += 1
                    continue
                scores.legacy.add(triple)
            kept.add(triple)
            scores.records.append(record)
    return scores


def repair(path: Path) -> str | None:
    """Cuts the last line of a record file if a killed run left it unfinished, so that
    the next record starts a line of its own; returns the warning to print."""
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    if parse(data[start:].decode(errors="replace")) is not None:
        with path.open("ab") as handle:  # a whole record, only its newline is missing
            handle.write(b"\n")
        return None
    with path.open("r+b") as handle:
        handle.truncate(start)
    line = data.count(b"\n") + 1
    return (
        f"warning: {path} line {line} was cut mid-way (a killed run?): "
        "dropped from the file, its score is computed again"
    )


class RecordFile:
    """Appends records to one file, each line whole or not at all.

    A line is written with ``os.write`` calls on a file opened for appending; if one
    fails (a full disk), the file is cut back to where the line began, so that the last
    complete record stays the last line, and the error is raised.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record) + "\n").encode()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        start = os.fstat(self._fd).st_size
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # Shrinking a file needs no space: this works on a full disk too.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            raise

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RecordFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Calls ``write(temporary)`` on a hidden file beside ``path``, then renames it to
    ``path``: readers (and a later run) see the old file or the new one, never a part.
    The temporary file is removed if ``write`` fails."""
    partial = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(partial)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """``text`` into ``path``, whole or not at all (:func:`write_atomic`)."""
    return write_atomic(path, lambda p: p.write_text(text))


def write_json(path: Path, value: Any) -> Path:
    """``value`` as indented JSON into ``path``, whole or not at all."""
    return write_text(path, json.dumps(value, indent=1) + "\n")


def output_error(err: OSError, out: Path, kept: str) -> OutputError:
    """The one-line error of a failed write: the OS's reason, what was kept, what next."""
    reason = os.strerror(err.errno) if err.errno else str(err)
    where = f" ({err.filename})" if getattr(err, "filename", None) else ""
    again = (
        "free some space and run the same command again to resume"
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else "run the same command again to resume"
    )
    return OutputError(f"cannot write to {out}{where}: {reason}; {kept}; {again}")


@contextlib.contextmanager
def folder_lock(out: Path, rank: int = 0) -> Iterator[None]:
    """Holds ``out``'s lock for this run (rank): a second run writing the same folder is
    refused with a message naming the run that holds it. The lock is the kernel's
    (``flock``): a killed run releases it. The lock file is removed when the run ends,
    so a finished folder holds only its outputs."""
    path = out / LOCK.format(rank=rank)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RequestError(
                f"{out} is being written by another run ({_holder(path)}): wait for it to "
                "end, or pass another --out"
            ) from None
        # The run that held the lock may have removed the file between our open and our
        # lock: then we hold a lock on a file nobody else sees, and must take the new one.
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        os.close(fd)
    try:
        about = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(about).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still locked: no other run can be between its open and lock
        os.close(fd)  # releases the lock


def locked_ranks(out: Path) -> set[int]:
    """The ranks whose lock file is in ``out``: those of a run writing it now (or
    killed before it could remove its file)."""
    before, after = (re.escape(part) for part in LOCK.split("{rank}"))
    found = (re.fullmatch(f"{before}(\\d+){after}", p.name) for p in out.iterdir())
    return {int(m.group(1)) for m in found if m}


def _holder(path: Path) -> str:
    try:
        about = json.loads(path.read_text())
        return (
            f"pid {about['pid']} on {about['host']}, started {about['started']}: {about['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "its process details are not readable"

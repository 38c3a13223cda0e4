"""What the services share: the output folder (checked, created once, locked, written
whole), the images checked up front, the methods' errors as one line, progress bars."""

from __future__ import annotations

import contextlib
import inspect
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from captum_fdcam.errors import Interrupted, RequestError
from captum_fdcam.images import first_line

T = TypeVar("T")


def checked_out(out: Path) -> Path:
    """``out`` must be a folder or a path where one can be created, and writable."""
    if out.exists() and not out.is_dir():
        raise RequestError(f"--out {out} is a file, not a folder")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RequestError(f"--out {out}: {parent} is a file, not a folder")
    # os.access answers for the real user; as root it always says yes (the folder's
    # creation then fails, and OutputFolder reports it in one line).
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RequestError(f"--out {out}: {parent} is not writable")
    return out


def checked_images(paths: Sequence[Path]) -> None:
    """Decodes every image in full, so that a broken or truncated file fails before the
    first output is written (they are decoded again when used: holding them all would
    take the memory of the whole folder)."""
    from captum_fdcam.images import read_image

    for path in paths:
        try:
            read_image(path)
        except ValueError as err:
            raise RequestError(str(err)) from err


@contextlib.contextmanager
def method_errors(method: str) -> Iterator[None]:
    """The library's errors of a method on this model (a module FG-CAM cannot propagate
    through, ...) as one-line request errors."""
    from captum_fdcam.errors import CamError

    try:
        yield
    except CamError as err:
        raise RequestError(f"{method}: {first_line(err)}") from err


class OutputFolder:
    """A service's output folder while it writes.

    :meth:`create` makes the folder and takes its lock (:func:`~captum_fdcam.records.
    folder_lock`), once, when there is something to write; a folder that exists already
    is locked on entry. Inside the ``with`` block a
    failed write (``OSError``: a full disk, a folder that cannot be created) becomes an
    :class:`~captum_fdcam.errors.OutputError` and Ctrl-C an
    :class:`~captum_fdcam.errors.Interrupted`, each one line saying what was kept
    (``kept()``) and how to resume.
    """

    def __init__(self, out: Path, kept: Callable[[], str], rank: int = 0) -> None:
        self.out = out
        self.kept = kept
        self.rank = rank
        self._stack = contextlib.ExitStack()

    def create(self) -> Path:
        if not self._stack._exit_callbacks:  # not yet created and locked
            from captum_fdcam.records import folder_lock

            self.out.mkdir(parents=True, exist_ok=True)
            self._stack.enter_context(folder_lock(self.out, self.rank))
        return self.out

    def __enter__(self) -> OutputFolder:
        if self.out.is_dir():
            # A folder another run is writing is refused before any work is done (a new
            # folder is locked when it is created, with the first result).
            self.create()
        return self

    def __exit__(self, kind: Any, err: Any, traceback: Any) -> None:
        self._stack.close()
        if isinstance(err, KeyboardInterrupt) and not isinstance(err, Interrupted):
            raise Interrupted(
                f"interrupted: {self.kept()} in {self.out}; run the same command again "
                "to do the rest"
            ) from None
        if isinstance(err, OSError) and not isinstance(err, RequestError):
            from captum_fdcam.records import output_error

            raise output_error(err, self.out, self.kept()) from err


class Progress:
    """Progress bars on stderr: over the items, and inside the perturbation CAMs (their
    forward passes), unless disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def items(self, items: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, total=total, disable=not self.enabled, leave=False)

    def method_options(self, method: str) -> dict[str, Any]:
        """``attribute``'s ``show_progress=True`` where the method takes it."""
        if not self.enabled:
            return {}
        from captum_fdcam import registry
        from captum_fdcam.resolve import method_class

        base, fg = registry.split_fg(method)
        if fg:
            from captum_fdcam.methods import FGCam

            cls: type = FGCam
        else:
            cls = method_class(base)
        parameters = inspect.signature(cls.attribute).parameters
        return {"show_progress": True} if "show_progress" in parameters else {}


@contextlib.contextmanager
def terminated_as_interrupted() -> Iterator[None]:
    """SIGTERM (``kill``, a batch scheduler's time limit) stops a command as Ctrl-C does:
    its output folder is closed and it says how much was kept. For the command's own
    process only: the previous handler is restored, and outside the main thread (where
    Python cannot install one) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

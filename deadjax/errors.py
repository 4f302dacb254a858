"""The errors deadjax reports to its users, in a leaf module every other imports.

Each carries one sentence for the user: the command line prints it after
``error:`` (or, for a stop, ``deadjax:``) and exits with the status below
(docs/faults.md lists every fault, its message and what to do).
"""

from __future__ import annotations

import errno
import os

EXIT_OK = 0
EXIT_FAILED = 1        # an unexpected error (a bug: please report it), or failed checks
EXIT_BAD_CONFIG = 2    # a bad config value, flag, dataset file or workdir content
EXIT_FAULT = 3         # the machine got in the way (disk full, read-only, vanished path)
EXIT_STOPPED = 4       # stopped by SIGTERM/SIGINT after a checkpoint: rerun to resume

RERUN = "rerun the same command to resume"


class ConfigError(ValueError):
    """A config value that is not allowed; the message is one sentence for the user."""


class WorkdirFault(RuntimeError):
    """The file system failed a write or read (disk full, read-only,
    vanished); nothing written before is damaged and the same command
    resumes once it is fixed. The message is one sentence for the user."""


class DamagedFile(ValueError):
    """A file of the workdir cannot be read back (truncated or corrupted
    after it was written); the message names it and what to do."""


class Stopped(RuntimeError):
    """A sweep stopped on a signal at an evaluation, after checkpointing it."""

    def __init__(self, group: str, chunk: int, step: int, total: int):
        self.group, self.chunk, self.step, self.total = group, chunk, step, total
        super().__init__(f"stopped at step {step} of {total} of group {group} (chunk {chunk}); "
                         f"{RERUN}.")


def _cause_text(text: str) -> int | None:
    """The errno a library's message names, where it only gives text."""
    text = text.lower()
    if "no space left" in text or "resource_exhausted" in text or "disk quota" in text:
        return errno.ENOSPC
    if "read-only file system" in text:
        return errno.EROFS
    if "permission denied" in text:
        return errno.EACCES
    if "no such file or directory" in text or "not_found" in text:
        return errno.ENOENT
    return None


def fault(error: BaseException, where, doing: str = "writing") -> WorkdirFault:
    """One sentence for a failed file-system operation on ``where`` (the file
    or folder), from an ``OSError``'s errno or a library's message."""
    code = getattr(error, "errno", None) or _cause_text(str(error))
    path = getattr(error, "filename", None) or where
    path = os.fspath(path) if path is not None else "the workdir"
    if code in (errno.ENOSPC, errno.EDQUOT):
        text = (f"the disk holding {path} is full ({doing} it); free space and {RERUN}")
    elif code == errno.EROFS:
        text = f"{path} is on a read-only file system; give a writable --workdir or {RERUN} once it is writable"
    elif code in (errno.EACCES, errno.EPERM):
        text = f"{path} is not writable (permission denied); fix its permissions and {RERUN}"
    elif code == errno.ENOENT:
        text = (f"{path} vanished while the sweep ran (was the workdir moved or deleted?); "
                f"restore it and {RERUN}")
    else:
        cause = getattr(error, "strerror", None) or " ".join(str(error).split())[:200]
        text = f"{doing} {path} failed ({cause}); {RERUN} once the cause is fixed"
    return WorkdirFault(text[0].upper() + text[1:] + ".")

"""Errors that slidecell reports to users as one line, without a traceback."""

from __future__ import annotations

import re


class SlidecellError(Exception):
    """Base class: the message is complete and meant for the user."""

    exit_code = 2


class SlideOpenError(SlidecellError):
    """A slide could not be opened (missing, unsupported, corrupt)."""


class SlideReadError(SlidecellError):
    """A region of an opened slide could not be read (truncated or corrupt data)."""


class MissingPixelSizeError(SlidecellError):
    """The slide does not say how large its pixels are and none was given."""


class ConfigError(SlidecellError):
    """A configuration file or value is invalid."""


class OutputError(SlidecellError):
    """The output directory cannot be used as asked."""


class InputError(SlidecellError):
    """An input file other than the slide (annotations, tables) is missing or invalid."""


class StorageError(SlidecellError):
    """The disk failed the run (full, over quota, read-only, I/O error): the environment, not the
    input. Its own exit code, so that a scheduler can tell it from a bad input and retry."""

    exit_code = 3


#: errno values that mean the storage, not slidecell or its input, failed
STORAGE_ERRNOS = {28: "no space left on the device", 122: "disk quota exceeded",
                  30: "the file system is read-only", 5: "an input/output error"}


def storage_problem(exc: BaseException) -> str | None:
    """What storage failure an OSError is, or None. Also for errors that carry the errno only in
    their message (pyarrow: ``[errno 28] No space left on device``)."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno
    if code is None:
        m = re.search(r"\[errno (\d+)\]", str(exc), re.IGNORECASE)
        code = int(m.group(1)) if m else None
    return STORAGE_ERRNOS.get(code)


def short_repr(value, limit: int = 80) -> str:
    """A value for an error message: its repr, cut to ``limit`` characters (an error never
    repeats a whole file or a huge config value)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

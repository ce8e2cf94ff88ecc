"""Errors that slidecell reports to users as one line, without a traceback."""

from __future__ import annotations


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


def short_repr(value, limit: int = 80) -> str:
    """A value for an error message: its repr, cut to ``limit`` characters (an error never
    repeats a whole file or a huge config value)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

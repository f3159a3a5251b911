"""Exception types raised by attnconv.

Every error names the problem and the fix. The command line prints ``str(error)`` on one line
(a traceback only with ``--debug``); the API raises these precise types. Each subclasses the
built-in exception a caller would naturally catch (``ValueError``, ``FileNotFoundError``...).
"""

from __future__ import annotations


class AttnconvError(Exception):
    """Base class of every error attnconv raises on purpose."""


class ConfigError(AttnconvError, ValueError):
    """An invalid configuration: unknown key, wrong type or out-of-range value."""


class DatasetError(AttnconvError, OSError):
    """A dataset directory or file is missing, incomplete or corrupted."""


class UnsafePickleError(DatasetError):
    """A pickle asked for a type outside the small allow-list of a known file format."""


class CheckpointError(AttnconvError, OSError):
    """A checkpoint is missing, truncated or corrupted."""


class ShapeError(AttnconvError, ValueError):
    """An input tensor has a shape a layer or model cannot take."""

"""Errors coopinterp raises for bad input; the CLI prints their one-line message instead of a traceback."""


class CoopError(Exception):
    """Base class: the message alone says what is wrong and with which file, key or value."""


class ConfigError(CoopError, ValueError):
    """An invalid configuration key or value."""


class CheckpointError(CoopError):
    """A missing, corrupt, truncated or mismatched run or checkpoint."""

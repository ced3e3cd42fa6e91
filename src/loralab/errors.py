"""Errors the runner reports to the user as one clear line (no traceback)."""


class LoralabError(Exception):
    """Base class: anything raised as a LoralabError is a user-facing message."""


class ConfigError(LoralabError):
    """A configuration value is invalid; the message names the value and what would be valid."""


class ModelUnavailableError(LoralabError):
    """Weights could not be found locally nor fetched."""


class DatasetUnavailableError(LoralabError):
    """A data set could not be found locally nor fetched."""


class DataFileError(LoralabError):
    """A local data file exists but cannot be read; the message names the file, the line and the problem."""


class NonFiniteLossError(LoralabError):
    """Training produced a NaN/inf loss or gradient."""

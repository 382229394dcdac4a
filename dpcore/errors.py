"""User-facing errors: each carries one line saying what is wrong, where, and how to fix it.

The CLI prints ``str(err)`` and exits with code 2; nothing else ever needs a traceback.
"""


class DPError(Exception):
    """Base class for errors caused by the user's input (config, data, files)."""


class ConfigError(DPError):
    """A profile or override is invalid."""


class DataError(DPError):
    """A dataset or synthetic set cannot be read or does not match."""


class TrainingDiverged(RuntimeError):
    """A training ended with non-finite weights: its run fails (a magnitude ranking of NaNs means
    nothing), the experiment's other runs go on."""


class DataWarning(UserWarning):
    """Something about the data is unusual but usable (e.g. a checksum mismatch)."""

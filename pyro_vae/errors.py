"""Errors that the user can fix: a missing file, a bad flag, a checkpoint of another program.

Every error of this kind derives from :class:`PyroVAEError`. The command line catches that
class alone and prints its message as one line (exit code 2); anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class PyroVAEError(Exception):
    """An error caused by input the user controls; its message says what to do about it."""


class DataError(PyroVAEError):
    """A dataset file is missing, truncated, corrupted or of the wrong format."""


class CheckpointError(PyroVAEError):
    """A run folder or checkpoint file is missing, unreadable or not from this project."""


class RunFolderError(PyroVAEError):
    """A run folder cannot be written: in use by another process, not a folder, read-only, full."""


class TrainingDivergedError(PyroVAEError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ConfigError(PyroVAEError):
    """A configuration value is out of range or contradicts a saved run."""


class ModelStructureError(PyroVAEError):
    """A model/guide pair does not have the structure an estimator needs (e.g. no data plate)."""


class EstimatorMemoryError(PyroVAEError):
    """An estimator ran out of memory; the message names a chunk size that fits."""

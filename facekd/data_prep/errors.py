"""Errors of the data-preparation tools that stop a whole command (bad arguments, missing model
files, outputs that would be overwritten). Problems with single images never raise: they go to
the failure summary of the batch."""
from __future__ import annotations

__all__ = ["DataPrepError", "DetectorModelError", "OutputExistsError"]


class DataPrepError(Exception):
    """A data-preparation command cannot run as asked; the message says what to change."""


class DetectorModelError(DataPrepError):
    """The face detector cannot be built: model file missing, not a detector, package absent."""


class OutputExistsError(DataPrepError):
    """An output file already exists and ``--overwrite`` was not given."""

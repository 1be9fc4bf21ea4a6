"""Errors of ``facekd.export``: each message names the file or option and the problem."""
from __future__ import annotations


class ExportInputError(ValueError):
    """Bad options or input files for the export (missing --calib, wrong detector...)."""


class ExportDriftError(RuntimeError):
    """A variant whose embeddings disagree with the torch model beyond tolerance (the message has the figures)."""

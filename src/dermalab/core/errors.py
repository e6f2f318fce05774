"""Exceptions with messages a user can act on.

Every error that stems from user input (a file, a config key, a dataset) names the thing at fault
and what is wrong with it, so the CLI can print it without a traceback.
"""

from __future__ import annotations


class DermalabError(Exception):
    """Base class for errors the CLI reports as a one-line message (exit code 2)."""


class StopTraining(Exception):  # noqa: N818 (a signal, not a failure)
    """Raised by a ``fit`` epoch callback to end a run early (the tuner's pruning); the MLflow
    run is ended as KILLED, not FAILED."""


class TrainingDivergedError(DermalabError):
    """The loss or the model's outputs became NaN/inf: the recipe is unstable (learning rate,
    loss parameters); continuing would only produce garbage."""


class ConfigError(DermalabError):
    """A config file or override is invalid."""


class DataError(DermalabError):
    """A dataset, CSV or split is invalid."""


class ImageError(DataError):
    """One image file cannot be used; ``path`` names it and ``reason`` says why.

    ``kind`` classifies the problem for callers that must react differently (the web service
    maps it to an HTTP status): ``unreadable`` (missing, a directory, an I/O error),
    ``not_image`` (empty or not an image format), ``too_large`` (pixel limit, decompression
    bomb) or ``corrupt`` (recognised but undecodable).
    """

    def __init__(self, path: str, reason: str, kind: str = "corrupt") -> None:
        self.path = path
        self.reason = reason
        self.kind = kind
        super().__init__(f"{path}: {reason}")


class LeakError(DataError):
    """A split shares groups (lesions/patients) or byte-identical images between its parts."""


class RunNotFoundError(DermalabError):
    """A folder given as a run directory is not one (or not a finished one): the message says
    what is missing and what to run."""


class PretrainedWeightsUnavailableError(DermalabError):
    """Pretrained weights were asked for but cannot be obtained; never fall back to random."""

"""The pipeline's error family. Messages name the object, the file and the date involved; chain with ``from e``."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(PipelineError):
    """A setting is missing or invalid."""


class ServiceError(PipelineError):
    """PostgreSQL or Redis could not be started or reached."""


class MigrationError(PipelineError):
    """A migration file failed or was edited after it was applied."""


class ValidationFailed(PipelineError):
    """Input data broke one or more validation rules.

    ``failures`` holds one human-readable line per failed rule, each naming the file, rows and field.
    """

    def __init__(self, message: str, failures: list[str] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class ModelError(PipelineError):
    """A model version is missing, unusable, or refused by the champion/challenger gate."""


class ScoringError(PipelineError):
    """A scoring run could not complete or its output failed its checks."""


class PublishError(PipelineError):
    """Publishing scores to Redis failed; the previously served version stays current."""


class FreshnessError(PipelineError):
    """The events a scoring run needs (the day before the score date) have not landed (issue 13)."""


class ExperimentError(PipelineError):
    """An A/B experiment's configuration or lifecycle action is invalid (issue 14): the message names the
    experiment, the field and the rule."""


class RunSuperseded(ScoringError):
    """A scoring run lost to another run of its score date (issue 15): the message names both runs; nothing of the
    losing run was kept (:mod:`ml.score.race`)."""

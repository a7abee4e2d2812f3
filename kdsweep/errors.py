"""The errors a user can cause. Library code raises these; only ``cli.py`` turns them into exits.

Each message is one line that names the file or field and the bad value.
"""


class KdsweepError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class SpecError(KdsweepError):
    """A study spec or CLI override is invalid. ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class DataError(KdsweepError):
    """A data set is missing, unreadable or malformed."""


class CheckpointError(KdsweepError):
    """A checkpoint is truncated, corrupted or carries code."""


class TrackingError(KdsweepError):
    """The MLflow tracking store cannot be reached or used."""


class StudyError(KdsweepError):
    """A study cannot go on (e.g. every trial failed, or the storage refuses it)."""


class LaunchError(KdsweepError):
    """A cluster launch cannot go ahead (bad option, unsafe env file, store or scheduler refusing)."""


class StorageLostError(StudyError):
    """The Optuna storage (PostgreSQL) went away mid-study for longer than kdsweep waits for it."""


class DiskFullError(CheckpointError):
    """A checkpoint could not be written: the disk (or the file size limit) is full."""


class TrialTakenOver(StudyError):
    """Another worker failed this process's running trial as stale (its heartbeats came late) and
    queued a retry; this process drops its copy of the trial and goes on with the next one."""

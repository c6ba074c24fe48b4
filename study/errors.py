"""Errors of the study service that the command line maps to exit codes (light: no Ray import)."""


class StudyInterrupted(RuntimeError):
    """The trials were stopped (Ctrl-C, `study stop`) before they all ended; the study can be
    resumed (exit 130)."""


class StudyFailed(RuntimeError):
    """Trials failed after their retries; the message names them and how to resume (exit 1)."""

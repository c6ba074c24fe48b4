"""Errors of the study service that the command line maps to exit codes (light: no Ray import)."""


class StudyInterrupted(RuntimeError):
    """The trials were stopped (Ctrl-C, `study stop`) before they all ended; the study can be
    resumed (exit 130)."""


class StudyFailed(RuntimeError):
    """Trials failed after their retries, or the tracking server or the Optuna storage stayed gone
    for longer than their clients wait; the message names the trials (and why) or the server, and
    how to resume (exit 1)."""

"""Errors of the study service that the command line maps to exit codes (light: no Ray import)."""


class StudyInterrupted(RuntimeError):
    """The trials were stopped (Ctrl-C) before they all ended; the study can be resumed (exit 130)."""

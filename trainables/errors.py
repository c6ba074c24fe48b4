"""Errors that mean "the input is wrong": the CLI turns them into exit code 2."""


class InputError(ValueError):
    """Bad input from the user: an option, a file or a dataset that cannot be used.

    The message names the option or file and says what is allowed.
    """


class DataError(InputError):
    """A dataset that cannot be made available (not fetchable, corrupt, wrong layout)."""

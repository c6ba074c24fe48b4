"""How every `study` command is registered: while it runs, whatever anything prints on stdout
(libraries announcing runs, for example) goes to stderr; stdout carries only the command's own
output (its returned text, or what it writes to `stdout`), so that --json output is one JSON
object and nothing else."""
from __future__ import annotations

import contextlib
import functools
import sys

import typer

#: The process's stdout, for a command's own output.
stdout = sys.stdout


def command(app: typer.Typer, name: str | None = None):
    """Register `fn` as a command of `app`; text it returns is written to stdout."""
    def register(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            with contextlib.redirect_stdout(sys.stderr):
                text = fn(*args, **kwargs)
            if text:
                stdout.write(text if text.endswith("\n") else text + "\n")
                stdout.flush()
        return app.command(name)(run)
    return register

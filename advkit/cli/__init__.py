"""The ``advkit`` command line: a thin layer over the click-free library (:mod:`advkit.studies` and below).

Every command is defined in a module of this package and speaks one vocabulary (:mod:`advkit.cli.options`); this
module holds the group, its one error handler and the options every command has (``--threads``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from advkit import __version__
from advkit.cli import attack, evaluate, listings, studies, sweep, transfer

#: Set to 1 to see the Python traceback of an unexpected error instead of the one-line message.
TRACEBACK_ENV = "ADVKIT_TRACEBACK"


class AdvkitGroup(click.Group):
    """The CLI's one error handler: no command ends in a traceback.

    advkit's own errors (:class:`advkit.errors.AdvkitError`, e.g. a parameter out of range, a weights file that
    fails its sha256, an output folder holding someone else's files) become one-line click errors (usage errors,
    exit code 2, where the user asked for something invalid); a third-party plugin that fails to import or
    registers something invalid names itself; anything else is reported in one line as an internal error, with
    the way to see its traceback (``ADVKIT_TRACEBACK=1``).
    """

    def main(self, args=None, *rest: Any, **options: Any) -> Any:
        from advkit.provenance import command_line

        with command_line(args):  # reports record the exact command line
            return super().main(args, *rest, **options)

    def invoke(self, ctx: click.Context) -> Any:
        from advkit.errors import AdvkitError

        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader went away (`advkit attacks | head`): stop quietly, as other tools do
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise SystemExit(1) from None
        except AdvkitError as error:
            message = _one_line(error)
            if getattr(error, "usage", False):
                raise click.UsageError(message) from None
            raise click.ClickException(message) from None
        except Exception as error:  # a bug, or an error nobody translated: one line, never a traceback
            if os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
                raise
            raise click.ClickException(
                f"internal error: {type(error).__name__}: {_one_line(error)} (this is a bug in advkit or a plugin; "
                f"set {TRACEBACK_ENV}=1 to see the traceback)"
            ) from None


def _one_line(error: BaseException) -> str:
    """The error's message (with any notes) on one line."""
    text = str(error) or type(error).__name__
    notes = getattr(error, "__notes__", None) or []
    return " ".join(" ".join(part.split()) for part in [text, *notes])


@click.group(cls=AdvkitGroup)
@click.version_option(__version__, prog_name="advkit")
def cli() -> None:
    """advkit: adversarial attacks, constraint sets and robustness reports for PyTorch."""


# ---------------------------------------------------------------- options every command has

#: The environment variable behind every command's --threads.
THREADS_ENV = "ADVKIT_THREADS"


def _set_threads(ctx: click.Context, param: click.Parameter, threads: int | None) -> None:
    """--threads N / ADVKIT_THREADS=N: torch's intra-op threads for this command (default: torch's own choice, one per
    core, which on a loaded or shared machine is much slower than 1 or 2)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _add_threads_option(command: click.Command) -> None:
    command.params.append(
        click.Option(
            ["--threads"],
            type=click.IntRange(min=1),
            envvar=THREADS_ENV,
            default=None,
            expose_value=False,
            is_eager=True,
            callback=_set_threads,
            help=f"torch threads (or ${THREADS_ENV}); default torch's, one per core.",
        )
    )


for _module in (listings, attack, studies, transfer, sweep, evaluate):
    for _command in _module.COMMANDS:
        _add_threads_option(_command)
        cli.add_command(_command)


def main() -> None:  # pragma: no cover - console entry
    cli(prog_name="advkit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""How the CLI ends: 0 on success, 2 with one paragraph for user errors, 1 with a traceback for bugs."""

from __future__ import annotations

import functools
import sys
import traceback

import typer
from rich.console import Console

from surgeon.errors import SurgeonError

err_console = Console(stderr=True, highlight=False, soft_wrap=True)
USER_ERROR = 2
INTERNAL_ERROR = 1


def handle_errors(command):
    """Wrap a command: SurgeonError → message and exit 2; any other exception → traceback and exit 1."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except typer.Exit:
            raise
        except SurgeonError as exc:
            err_console.print(f"[bold red]error:[/] {exc.paragraph()}")
            raise typer.Exit(USER_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None
        except Exception:  # noqa: BLE001 - anything else is a bug in surgeon
            traceback.print_exc(file=sys.stderr)
            err_console.print("[bold red]internal error:[/] this is a bug in surgeon; please report it with the "
                              "command, the recipe and the traceback above.")
            raise typer.Exit(INTERNAL_ERROR) from None

    return wrapper

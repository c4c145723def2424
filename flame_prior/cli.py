"""``flame-prior`` command line: one tyro subcommand per job, each a dataclass config.

Exit codes (see :mod:`flame_prior.errors` and the README): 0 success, 1 internal failure,
2 bad input, 3 bad model file, 4 fit failed, 130 interrupted.
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated, Union

import tyro
from rich.console import Console

from flame_prior.config import FitConfig
from flame_prior.demo import DemoConfig
from flame_prior.errors import FlamePriorError

Command = Union[
    Annotated[FitConfig, tyro.conf.subcommand("fit", description="Fit FLAME and one camera per view to photos.")],
    Annotated[DemoConfig, tyro.conf.subcommand("demo", description="Synthetic round trip with known cameras.")],
]


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, exit 130
    raise KeyboardInterrupt


def execute(config, console: Console | None = None) -> int:
    """Run a parsed config; map errors to exit codes with a one-line message."""
    console = console or Console(stderr=True)
    try:
        if isinstance(config, DemoConfig):
            from flame_prior.demo import run_demo

            run_demo(config, console=console)
        else:
            from flame_prior.pipeline import run

            run(config, console=console)
        return 0
    except FlamePriorError as e:
        console.print(f"[bold red]error:[/bold red] {e}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: no output was written (a previous output is left as it was)[/yellow]")
        return 130


def entrypoint() -> None:
    signal.signal(signal.SIGTERM, _raise_interrupt)
    config = tyro.cli(Command)
    sys.exit(execute(config))


if __name__ == "__main__":
    entrypoint()

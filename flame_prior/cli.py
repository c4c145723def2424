"""``flame-prior`` command line: one tyro subcommand per job, each a dataclass config.

Exit codes (see :mod:`flame_prior.errors` and the README): 0 success, 1 internal failure,
2 bad input (and tyro's own argument errors), 3 bad model file, 4 fit failed, 130 interrupted.
``FLAME_PRIOR_DEBUG=1`` prints the traceback of any error.
"""

from __future__ import annotations

import os
import sys
import traceback
import importlib
from typing import TYPE_CHECKING, NamedTuple, Sequence

from flame_prior.errors import FlamePriorError, Interrupted, install_signal_handlers
from flame_prior.threads import set_wait_policy

if TYPE_CHECKING:  # rich, tyro and the configs load when a command is chosen: `flame-prior --help` needs none
    from rich.console import Console


class Command(NamedTuple):
    """One subcommand: its name, one line of help, and where its dataclass config lives."""

    name: str
    description: str
    config: str  # "module:Class", imported only when this command is chosen


COMMANDS = (
    Command("fit", "Fit FLAME and one camera per view to photos.", "flame_prior.config:FitConfig"),
    Command("batch", "Fit many scenes (a folder per subject, or --single-images), resumable, on worker processes "
            "or Ray.", "flame_prior.batch.config:BatchConfig"),
    Command("demo", "Synthetic round trip with known cameras.", "flame_prior.demo_config:DemoConfig"),
    Command("nerfstudio-weights", "Install the AlexNet weights of nerfstudio's LPIPS metric (offline).",
            "flame_prior.lpips_weights:WeightsConfig"),
)


#: Set to 1 to print the full traceback of any error (internal failures always point to it).
ENV_DEBUG = "FLAME_PRIOR_DEBUG"


def _debug() -> bool:
    return os.environ.get(ENV_DEBUG, "").strip().lower() not in ("", "0", "false", "no")


def execute(config, console: Console | None = None) -> int:
    """Run a parsed config; map errors to exit codes with a one-line message.

    0 success, 1 internal failure (an unexpected exception: a bug), 2 bad input, 3 bad model file,
    4 fit failed, 130 interrupted. With ``FLAME_PRIOR_DEBUG=1`` the traceback is printed too.
    """
    from rich.markup import escape

    from flame_prior.progress import make_console

    console = console or make_console()
    try:
        if _is_config(config, "demo"):
            from flame_prior.demo import run_demo

            run_demo(config, console=console)
        elif _is_config(config, "nerfstudio-weights"):
            from flame_prior.lpips_weights import install_weights

            console.print(install_weights(config), markup=False, highlight=False, soft_wrap=True)
        elif _is_config(config, "batch"):
            from flame_prior.batch import run_batch

            run_batch(config, console=console)
        else:
            if "flame_prior.pipeline" not in sys.modules:  # a first sign of life before seconds of imports
                console.print("flame-prior fit: loading torch and the pipeline ...", style="dim", highlight=False)
            from flame_prior.pipeline import run

            run(config, console=console)
        return 0
    except FlamePriorError as e:
        if _debug():
            console.print(traceback.format_exc(), markup=False, highlight=False)
        console.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False, soft_wrap=True)
        return e.exit_code
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through errors.signal_handler
        message = str(e) if isinstance(e, Interrupted) else Interrupted().args[0]
        console.print(f"[yellow]{escape(message)}[/yellow]", highlight=False, soft_wrap=True)
        return 130
    except Exception as e:  # noqa: BLE001 — anything else is a bug: one line, exit 1
        if _debug():
            console.print(traceback.format_exc(), markup=False, highlight=False)
            where = "the traceback is above"
        else:
            where = f"set {ENV_DEBUG}=1 to see the traceback"
        first = (str(e).strip().splitlines() or [""])[0]
        console.print(f"[bold red]internal error:[/bold red] {escape(type(e).__name__)}: {escape(first)} "
                      f"({where}; please report it at the project's issue tracker)", highlight=False, soft_wrap=True)
        return 1


def _is_config(config, command: str) -> bool:
    """``isinstance(config, <command's config class>)`` without importing that class's module: a config
    whose class module was never imported cannot be an instance of it (a fit imports no other command's)."""
    module, name = next(c.config for c in COMMANDS if c.name == command).split(":")
    return module in sys.modules and isinstance(config, getattr(sys.modules[module], name))


def main(argv: Sequence[str] | None = None, console: Console | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run it; the exit code.

    tyro's own argument errors (unknown flag, missing ``--data``, a bad value) exit 2 through
    ``SystemExit``, ``--help`` exits 0. The subcommand is picked here, before tyro runs, so that only
    the chosen command's config is imported and ``flame-prior --help`` imports no config at all
    (numpy and tyro alone cost a third of a second).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((c for c in COMMANDS if argv and argv[0] == c.name), None)
    if chosen is None:
        _usage(argv)
    import tyro

    module, name = chosen.config.split(":")
    config_type = getattr(importlib.import_module(module), name)
    config = tyro.cli(config_type, args=argv[1:], prog=f"flame-prior {chosen.name}", description=chosen.description)
    return execute(config, console)


def _usage(argv: list[str]) -> None:
    """The top-level help (exit 0 for ``-h``/``--help``), or what is wrong with the first argument (exit 2)."""
    width = max(len(c.name) for c in COMMANDS)
    lines = ["usage: flame-prior {" + ",".join(c.name for c in COMMANDS) + "} [OPTIONS]", "",
             "Camera poses and a FLAME head for photos of one head; see the README.", "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.description}" for c in COMMANDS]
    lines += ["", "`flame-prior COMMAND --help` lists a command's options."]
    if argv and argv[0] in ("-h", "--help"):
        print("\n".join(lines))
        raise SystemExit(0)
    problem = f"unknown command {argv[0]!r}" if argv else "a command is required"
    print("\n".join(lines) + f"\n\nflame-prior: error: {problem}", file=sys.stderr)
    raise SystemExit(2)


def entrypoint() -> None:
    set_wait_policy()  # before torch is imported (by a command handler): see flame_prior.threads
    install_signal_handlers()
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process with ``code`` once a command has finished and written everything.

    With torch loaded, the interpreter's own teardown (clearing torch's modules one by one) took
    0.8 s of a 5.7 s one-photo run on an idle 2-core machine; the exit handlers (``atexit``: Ray,
    multiprocessing, temporary folders) and the logging and stream flushes still run, then the
    process ends without the teardown. Falls back to ``sys.exit`` without torch, or while a
    non-daemon thread still runs (its work must not be cut short).
    """
    import threading

    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    if "torch" not in sys.modules or busy:
        sys.exit(code)
    import atexit
    import logging

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to say
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    entrypoint()

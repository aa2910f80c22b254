"""The ``astro`` command line.

Each sub-command lives in its own module under :mod:`astrocli.commands` and adds itself to
the Typer app through a ``register(app)`` function. Heavy imports (torch, timm) happen inside
the command bodies, so ``astro --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from astrocli import __version__, is_missing_pytorch
from astrocli.errors import AstroError
from astrocli.notices import install_warning_printer
from astrocli.output import make_console

app = typer.Typer(
    name="astro",
    help="Train, evaluate, export and benchmark small-data image classifiers "
    "(Astroformer, CCT, CVT, ViT-Lite, ViT, ResNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

PYTORCH_NEEDED = (
    "this command needs PyTorch, and '{missing}' is not installed: pip install torch torchvision timm "
    "(only `astro predict --checkpoint MODEL.onnx` runs without PyTorch)"
)

# Order here is the order in `astro --help`.
COMMAND_MODULES = (
    "train",
    "cv",
    "tune",
    "audit",
    "report",
    "eval",
    "compare",
    "predict",
    "export",
    "bench",
    "models",
    "recipes",
)


def _version_callback(value: bool) -> None:
    if value:
        print(f"astro {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """astro: small-data image classifiers from the command line."""


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"astrocli.commands.{name}")
        except ModuleNotFoundError as exc:  # a command not built yet must not break the others
            if exc.name == f"astrocli.commands.{name}":
                continue
            raise
        module.register(app)


_register_commands()


def main() -> None:
    """Entry point of the ``astro`` console script: user errors become one line, never a traceback."""
    err = make_console(stderr=True)
    install_warning_printer()  # library warnings meant for the user: one `warning:` line each
    try:
        # standalone_mode=False makes click *return* the code of a `raise typer.Exit(code)`.
        exit_code = app(standalone_mode=False)
        if isinstance(exit_code, int) and exit_code:
            sys.exit(exit_code)
    except AstroError as exc:
        # escape: a message may hold [brackets] (`[0.08, 1.0]`, paths, "pip install 'astrocli[export]'").
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("[bold red]aborted[/]")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        sys.exit(130)
    except ModuleNotFoundError as exc:
        # An ONNX-only install has no torch/torchvision/timm; commands import them lazily, so the
        # first one that needs them lands here: one line saying what to install, not a traceback.
        if not is_missing_pytorch(exc):
            raise
        message = PYTORCH_NEEDED.format(missing=exc.name)
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()

"""``cortex``: the command-line entry point. Each use adds its own sub-command group here."""

from __future__ import annotations

import typer

app = typer.Typer(help="cortex-memory: recurrent memory that updates in constant time.", no_args_is_help=True)


@app.callback()
def _root() -> None:
    """cortex-memory command line."""


@app.command()
def info() -> None:
    """Version, torch, CUDA/Triton availability, and the registered cells and blocks."""
    import importlib.util

    import torch
    from rich.console import Console
    from rich.table import Table

    import cortexmem

    table = Table(title="cortex-memory", show_header=False)
    table.add_row("cortexmem", cortexmem.__version__)
    table.add_row("torch", torch.__version__)
    cuda = torch.cuda.is_available()
    table.add_row("CUDA", f"yes ({torch.cuda.get_device_name(0)})" if cuda else "no")
    table.add_row("Triton", "installed" if importlib.util.find_spec("triton") else "not installed")
    table.add_row("cells", ", ".join(cortexmem.list_cells()))
    table.add_row("blocks", ", ".join(cortexmem.list_blocks()))
    Console().print(table)


from .evals.cli import eval_command  # noqa: E402

app.command("eval")(eval_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

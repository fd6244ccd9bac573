"""``python -m cortexmem.evals`` (and ``torchrun --nproc-per-node N -m cortexmem.evals``)."""

import typer

from .cli import eval_command

app = typer.Typer(add_completion=False)
app.command()(eval_command)

if __name__ == "__main__":
    app()

"""Command line: `diffedit edit`, `diffedit mask`, `diffedit composite`, `diffedit demo`, `diffedit shapeworld ...`,
`diffedit bench ...`.

One module per group of commands (edit.py, composite.py, shapeworld.py, bench.py), what they share in common.py, the checks
made before a model loads in checks.py, exit codes and one-line errors in guard.py; this module only assembles
them into `app`, the console script `diffedit`.
"""

from __future__ import annotations

import typer

from diffedit.cli.batch import batch
from diffedit.cli.bench import bench_app
from diffedit.cli.composite import composite
from diffedit.cli.common import fail, load_editor, quiet_libraries, resolve_device, resolve_dtype, set_threads
from diffedit.cli.edit import demo, edit, mask_command
from diffedit.cli.guard import GuardedGroup
from diffedit.cli.serve import serve
from diffedit.cli.shapeworld import shapeworld_app

__all__ = ["app", "fail", "load_editor", "quiet_libraries", "resolve_device", "resolve_dtype", "set_threads"]

app = typer.Typer(
    cls=GuardedGroup,  # one-line errors and exit codes for everything a command raises (guard.py)
    add_completion=False,
    no_args_is_help=True,
    help="Text-driven semantic image editing with latent diffusion (DiffEdit).",
    pretty_exceptions_enable=False,
)
app.command("edit")(edit)
app.command("mask")(mask_command)
app.command("demo")(demo)
app.command("composite")(composite)
app.command("batch")(batch)
app.command("serve")(serve)
app.add_typer(shapeworld_app, name="shapeworld")
app.add_typer(bench_app, name="bench")


def main() -> None:  # pragma: no cover - console entry
    app()

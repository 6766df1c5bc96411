"""`python -m diffedit.cli`: the same as the `diffedit` console script."""

from diffedit.cli import app

app()

"""The local engine: one BatchEditor in this process, the planned groups in order."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .runner import BatchEditor

__all__ = ["run_local"]


def run_local(groups: list[dict[str, Any]], editor_kwargs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Result rows of every group, as each finishes (the model loads once, before the first)."""
    editor = BatchEditor(**editor_kwargs)
    for group in groups:
        yield from editor.run_group(group)

"""`diffedit serve`: a web page for DiffEdit (gradio, the `[ui]` extra), in three parts.

session.py keeps the editor and what it reuses between requests (mask maps, inversions) and knows nothing of
gradio; views.py draws what the page shows (mask overlays, the brush's corrections, examples, downloads); app.py
lays the page out and wires its events. Only app.py imports gradio, and only when a page is built.
"""

from .session import Edits, Preview, Session

__all__ = ["Session", "Preview", "Edits", "build_app"]


def build_app(session: Session, **kwargs):
    """The gradio Blocks of the page (imports gradio)."""
    from .app import build_app as build

    return build(session, **kwargs)

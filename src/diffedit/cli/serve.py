"""`diffedit serve`: the web page (webui/), on one editor loaded at start."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from diffedit.cli.common import check_flow_decoder, check_range, embedded_model, fail, load_editor, require, resolve_device
from diffedit.cli.common import set_threads
from diffedit.cli.edit import CONFIG_OPTION, FLOW_DECODER_OPTION
from diffedit.images import DEFAULT_MAX_PIXELS

MAX_QUEUE = 16  # requests waiting beyond this are refused with a message
EMBEDDED = (None, "shapeworld", "shapeworld-flow")  # --model values whose page offers ShapeWorld examples


def launch(editor, *, host: str = "127.0.0.1", port: int = 7860, max_upload_mb: float = 20.0,
           max_pixels: int | None = DEFAULT_MAX_PIXELS, downloads: Path | None = None, block: bool = True,
           examples: bool = True):
    """Build the page on `editor` and serve it (with ShapeWorld examples unless `examples` is False); with
    block=False, return the running app (close it with .close())."""
    from diffedit.webui import Session, build_app
    from diffedit.webui.app import CSS, THEME

    app = build_app(Session(editor, max_pixels=max_pixels), downloads=downloads, examples=examples)
    app.queue(max_size=MAX_QUEUE)
    app.launch(server_name=host, server_port=port, max_file_size=int(max_upload_mb * 1024 * 1024), theme=THEME, css=CSS,
               allowed_paths=[str(app.downloads)], prevent_thread_lock=not block, quiet=not block,
               footer_links=[], show_error=True)
    return app


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(7860, "--port", help="Port to listen on."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Hub id, diffusers folder or .safetensors/.ckpt (default: embedded ShapeWorld model).",
    ),
    config: Optional[str] = CONFIG_OPTION,
    inpaint_model: str = typer.Option(
        "auto", "--inpaint-model", help="Inpainting model (folder, .safetensors, hub id) of the first candidate; 'none'; "
        "'auto': the embedded inpainter with the embedded model.",
    ),
    flow_decoder: Optional[str] = FLOW_DECODER_OPTION,
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: str = typer.Option("auto", "--dtype", help="fp32 | fp16 | bf16 (default: fp16 on cuda, fp32 on cpu)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Refuse larger uploads (megabytes)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse larger images (width x height)."),
) -> None:
    """Serve the web page: upload an image (or pick a ShapeWorld example), preview and correct the mask, edit."""
    require("gradio", "ui", "diffedit serve")
    check_range(port, "--port", 1, 65535)
    check_range(max_upload_mb, "--max-upload-mb", 0.001, 10_000)
    check_range(max_pixels, "--max-pixels", 256)
    if inpaint_model == "same":
        fail("--inpaint-model same is for diffedit edit and batch; the web page takes a model, 'auto' or 'none'")
    check_flow_decoder(embedded_model(model), flow_decoder)  # the page's first choice; it offers both
    set_threads(threads)
    editor = load_editor(model, resolve_device(device), dtype, config, quiet=False, inpaint_model=inpaint_model)
    if flow_decoder is not None:
        editor.decoder = flow_decoder
    typer.echo(f"diffedit serve: {editor.name} on {editor.device}; open http://{host}:{port}")
    launch(editor, host=host, port=port, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
           examples=model in EMBEDDED)  # ShapeWorld scenes mean nothing to a photo model

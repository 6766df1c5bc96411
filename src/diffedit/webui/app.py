"""The page: its layout (inputs | mask | result) and its events, on a `Session`. Imports gradio (the `[ui]` extra).

Events that run the model (preview, edit) share one queue slot; the sliders, the target picker and "reset" only
threshold the stored maps again (no model), in their own slot, the latest move winning.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from ..flow.editor import DECODERS, FlowEditor
from ..results import EditOptions
from .session import MAX_SEED, Session, read_upload
from .views import ADD_COLOR, REMOVE_COLOR, candidate_rows, corrections, for_display, overlay, save_download
from .views import shapeworld_examples

__all__ = ["build_app", "THEME", "CSS"]

DEFAULTS = EditOptions()
THEME = gr.themes.Soft(primary_hue="rose", neutral_hue="slate")
CSS = """
#status { min-height: 2.5em; }
#title h1 { margin-bottom: 0; }
.gradio-container { max-width: 1500px !important; }
"""
INTRO = (
    "# DiffEdit\n"
    "Text-driven image editing: describe the image (**source**) and what it should become (**targets**, one per "
    "line). The **mask** of each target appears first: tune it with the sliders (no model run) or correct it with "
    "the brush, then **Edit**. The image's inversion is kept: editing again with other targets or guidance reuses it."
)
BRUSH_HELP = (f"Red area: what the edit replaces; yellow line: the cells decoding paints in. Brush: "
              f"<span style='color:{ADD_COLOR}'>■</span> adds to the mask, "
              f"<span style='color:{REMOVE_COLOR}'>■</span> removes from it (for the target shown).")


def _targets(text: str | None) -> list[str]:
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def _seed(value) -> int | None:
    text = str(value if value is not None else "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) >= MAX_SEED:
        raise gr.Error(f"the seed must be an integer in [0, {MAX_SEED}), or empty for a random one; got {text!r}")
    return int(text)


def _request(session: Session, path, source, targets_text, seed, threshold, smooth, dilate, steps, strength, guidance,
             one_candidate):
    """The page's inputs checked: (image, source, targets, seed, options); a bad one is a gr.Error, said on the page."""
    if not path:
        raise gr.Error("upload an image, or pick one of the examples")
    targets = _targets(targets_text)
    if not targets:
        raise gr.Error("write at least one target prompt (one per line)")
    flags = dict(mask_threshold=float(threshold), mask_smooth=float(smooth), mask_dilate=int(dilate),
                 num_inference_steps=int(steps), strength=float(strength), guidance_scale=float(guidance))
    if one_candidate:
        flags.update(extra_strengths=(), noise_candidates=(), caption_candidate=False)
    try:
        image = read_upload(path, session.max_pixels)
        options = session.options(**flags)
    except ValueError as e:
        raise gr.Error(str(e)) from e
    return image, (source or "").strip(), targets, _seed(seed), options


def _mask_outputs(page, session: Session, image, targets, preview, shown: int | None, note: str):
    j = shown if shown is not None and 0 <= shown < len(targets) else 0
    view = overlay(image, preview.masks, j, session.editor.vae_scale_factor)
    cover = float(preview.masks.pixel[j].float().mean())
    lines = [note, f"target {j + 1} ({targets[j]!r}): the mask covers {cover:.1%} of the image"]
    lines += [f"⚠ {w}" for w in preview.masks.warnings]
    return {
        page.editor: {"background": view, "layers": [], "composite": None},
        page.shown: gr.update(choices=[(f"{k + 1}: {t}", k) for k, t in enumerate(targets)], value=j),
        page.seed: str(preview.seed),
        page.status: "\n\n".join(lines),
    }


def _preview(session: Session, page, compute: bool):
    def handler(path, source, targets_text, seed, threshold, smooth, dilate, steps, strength, guidance, one, shown,
                progress=gr.Progress(track_tqdm=True)):
        image, source, targets, seed, options = _request(session, path, source, targets_text, seed, threshold, smooth,
                                                         dilate, steps, strength, guidance, one)
        preview = session.preview(image, source, targets, seed, options, compute=compute,
                                  phase=lambda text: progress(0.0, desc=text))
        if preview is None:
            return {page.status: "The mask of these prompts and seed is not computed yet: press **Preview mask**."}
        note = (f"Mask computed ({preview.seconds:.1f} s); the sliders now re-threshold it without the model."
                if preview.computed else "Mask re-thresholded from the stored map (no model run).")
        return _mask_outputs(page, session, image, targets, preview, shown, note)

    return handler


def _edit(session: Session, page, downloads: Path):
    def handler(path, source, targets_text, seed, threshold, smooth, dilate, steps, strength, guidance, one, shown,
                editor_value, decoder, progress=gr.Progress(track_tqdm=True)):
        image, source, targets, seed, options = _request(session, path, source, targets_text, seed, threshold, smooth,
                                                         dilate, steps, strength, guidance, one)
        phase = lambda text: progress(0.0, desc=text)  # noqa: E731
        preview = session.preview(image, source, targets, seed, options, phase=phase)
        j = shown if shown is not None and 0 <= shown < len(targets) else 0
        painted = corrections((editor_value or {}).get("layers"), preview.masks.pixel[j].numpy())
        edits = session.edit(image, source, targets, preview.seed, options, {j: painted} if painted is not None else None,
                             phase=phase, decoder=decoder if page.flow_decoder else None)
        folder = Path(tempfile.mkdtemp(prefix="edit-", dir=downloads))
        files = save_download(folder, Path(path).stem, edits, Path(path).name)
        after = edits.results[j].images[0]
        lines = [f"Edited {len(targets)} target(s) with seed {edits.seed}."] + edits.notes
        lines += [f"⚠ {w}" for r in edits.results for w in r.warnings]
        return {
            page.compare: (for_display(image), for_display(after)),
            page.gallery: [(for_display(r.images[0]), f"{k + 1}: {t}") for k, (r, t) in enumerate(zip(edits.results, targets))],
            page.candidates: candidate_rows(edits),
            page.download: files,
            page.seed: str(edits.seed),
            page.status: "\n\n".join(lines),
            page.shown_results: [for_display(image)] + [for_display(r.images[0]) for r in edits.results],
        }

    return handler


def _compare_selected(shown: list | None, evt: gr.SelectData):
    """The before/after slider on the result picked in the gallery."""
    if not shown or evt.index is None or not 0 <= evt.index < len(shown) - 1:
        return gr.skip()
    return (shown[0], shown[evt.index + 1])


def _inputs_column(page, examples: list[list[str]]) -> None:
    page.image = gr.Image(label="Input image", type="filepath", image_mode=None, sources=["upload", "clipboard"],
                          height=300, elem_id="input-image")
    page.source = gr.Textbox(label="Source prompt: what the image shows", elem_id="source")
    page.targets = gr.Textbox(label="Target prompts: what it should show, one per line", lines=2, elem_id="targets")
    with gr.Row():
        page.preview_button = gr.Button("Preview mask", elem_id="preview")
        page.edit_button = gr.Button("Edit", variant="primary", elem_id="edit")
    with gr.Accordion("Mask", open=True):
        page.threshold = gr.Slider(0.0, 1.0, DEFAULTS.mask_threshold, step=0.01, label="Threshold", elem_id="threshold")
        page.smooth = gr.Slider(0.0, 4.0, DEFAULTS.mask_smooth, step=0.1, label="Smoothing (cells)", elem_id="smooth")
        page.dilate = gr.Slider(0, 4, DEFAULTS.mask_dilate, step=1, label="Dilation (cells)", elem_id="dilate")
    with gr.Accordion("Edit options", open=False):
        page.steps = gr.Slider(4, 100, DEFAULTS.num_inference_steps, step=1, label="DDIM steps", elem_id="steps")
        page.strength = gr.Slider(0.1, 1.0, DEFAULTS.strength, step=0.05, label="Encoding ratio r", elem_id="strength")
        page.guidance = gr.Slider(1.0, 15.0, DEFAULTS.guidance_scale, step=0.5, label="Guidance", elem_id="guidance")
        page.one = gr.Checkbox(False, label="One candidate (the paper's single decoding, about 3x faster)",
                               elem_id="one-candidate")
        flow = page.flow_decoder  # a flow model's decoders (docs/flow.md); hidden for other models
        page.decoder = gr.Radio(list(DECODERS), value=flow or DECODERS[0], visible=flow is not None,
                                label="Flow decoder (flowedit: no inversion; inverted: DiffEdit's on the flow)",
                                elem_id="flow-decoder")
    page.seed = gr.Textbox("", label="Seed (empty: random; the one used is written back)", placeholder="random",
                           elem_id="seed")
    page.examples = gr.Examples(examples, [page.image, page.source, page.targets], cache_examples=False,
                                label="ShapeWorld examples (the embedded model knows these scenes)") if examples else None


def _mask_column(page) -> None:
    page.shown = gr.Dropdown(choices=[], value=None, label="Mask of target", type="value", elem_id="shown",
                             allow_custom_value=False)
    page.editor = gr.ImageEditor(
        label="Mask preview", type="numpy", image_mode="RGBA", format="png", sources=(), transforms=(), layers=False,
        brush=gr.Brush(colors=[ADD_COLOR, REMOVE_COLOR], default_color=ADD_COLOR, color_mode="fixed", default_size=10),
        eraser=gr.Eraser(), canvas_size=(512, 512), height=420, elem_id="mask-editor",
    )
    gr.Markdown(BRUSH_HELP)
    page.reset = gr.Button("Reset to the computed mask", size="sm", elem_id="reset-mask")
    page.status = gr.Markdown("Upload an image or pick an example.", elem_id="status")


def _result_column(page) -> None:
    page.compare = gr.ImageSlider(label="Before / after", type="pil", elem_id="compare", max_height=420)
    page.gallery = gr.Gallery(label="Results, one per target (select one to compare it)", columns=4, height=150,
                              object_fit="contain", elem_id="results")
    page.candidates = gr.Dataframe(headers=["target", "candidate", "score", "chosen"], label="Candidates the model scored "
                                   "(higher: more like the target)", interactive=False, elem_id="candidates")
    page.shown_results = gr.State()  # [input, result 1, ...] as displayed
    page.download = gr.File(label="Download: image and JSON sidecar", file_count="multiple", interactive=False,
                            elem_id="download")


def _wire(session: Session, page, downloads: Path) -> None:
    request = [page.image, page.source, page.targets, page.seed, page.threshold, page.smooth, page.dilate,
               page.steps, page.strength, page.guidance, page.one, page.shown]
    mask_out = [page.editor, page.shown, page.seed, page.status]
    compute, stored = _preview(session, page, compute=True), _preview(session, page, compute=False)
    model = dict(concurrency_id="model", concurrency_limit=1)
    page.preview_button.click(compute, request, mask_out, **model)
    page.image.upload(compute, request, mask_out, **model)
    page.source.submit(compute, request, mask_out, **model)
    if page.examples is not None:  # an example fills the inputs, then its mask is shown
        page.examples.load_input_event.then(compute, request, mask_out, **model)
    quick = dict(concurrency_id="remask", concurrency_limit=1, trigger_mode="always_last", show_progress="hidden")
    for control in (page.threshold, page.smooth, page.dilate):
        control.change(stored, request, mask_out, **quick)
    page.shown.input(stored, request, mask_out, **quick)
    page.reset.click(stored, request, mask_out, **quick)
    outputs = [page.compare, page.gallery, page.candidates, page.download, page.seed, page.status, page.shown_results]
    page.edit_button.click(_edit(session, page, downloads), request + [page.editor, page.decoder], outputs, **model)
    page.gallery.select(_compare_selected, page.shown_results, page.compare, show_progress="hidden")


def build_app(session: Session, *, downloads: Path | None = None, examples: bool = True) -> gr.Blocks:
    """The page on `session`: downloads are written under `downloads` (default: a new temporary folder), ShapeWorld
    examples offered unless `examples` is False."""
    downloads = Path(downloads or tempfile.mkdtemp(prefix="diffedit-webui-"))
    page = SimpleNamespace(flow_decoder=session.editor.decoder if isinstance(session.editor, FlowEditor) else None)
    rows = shapeworld_examples(downloads / "examples") if examples else []
    with gr.Blocks(title="DiffEdit") as app:
        gr.Markdown(INTRO, elem_id="title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                _inputs_column(page, rows)
            with gr.Column(scale=5, min_width=340):
                _mask_column(page)
            with gr.Column(scale=5, min_width=340):
                _result_column(page)
        _wire(session, page, downloads)
    app.downloads = downloads
    return app

"""The web UI's server side (webui/session.py, views.py) without a browser: masks thresholded again without the model
equal a mask pass with those options, the stored maps and inversions are reused, the brush's corrections, the upload
limits, and the download's sidecar. tests/test_webui_browser.py drives the page itself in Chromium."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffedit.webui.session import Session, read_upload, remask
from diffedit.webui.views import ADD_COLOR, REMOVE_COLOR, candidate_rows, corrections, overlay, save_download

SOURCE, TARGETS = "a red square", ["a blue square", "a green circle"]


@pytest.mark.parametrize("changes", [
    dict(), dict(mask_threshold=0.3), dict(mask_smooth=2.5, mask_dilate=1), dict(mask_smooth=0.0, decode_threshold=None),
    dict(mask_threshold=0.7, mask_smooth=0.5, mask_dilate=2, mask_refine=False),
])
def test_masks_thresholded_again_equal_the_mask_pass(editor, image, changes):
    """remask(stored unsmoothed maps, options) is what DiffEditor.mask gives with those options, to the bit."""
    stored = editor.mask(image, SOURCE, TARGETS, seed=3, mask_smooth=0.0)
    direct = editor.mask(image, SOURCE, TARGETS, seed=3, **changes)
    again = remask(stored, editor_options(**changes), editor.vae_scale_factor)
    assert torch.equal(again.mask, direct.mask)
    assert torch.equal(again.pixel, direct.pixel)
    assert torch.allclose(again.soft, direct.soft, atol=1e-6)
    assert [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(again.mask_images, direct.mask_images)] == [True, True]


def editor_options(**changes):
    from diffedit import EditOptions

    return EditOptions().replace(**changes)


FAST = dict(num_inference_steps=6, extra_strengths=(), caption_candidate=False, rerank_noises=1, mask_noises=2)


def test_session_reuses_the_stored_map_and_the_inversion(editor, image, tmp_path):
    """Thresholds re-threshold the stored map (no mask pass); guidance or targets changed reuse the inversion; the seed
    drawn for an empty seed box is the one edited with; the download holds each image and its sidecar."""
    session = Session(editor)
    picture = Image.fromarray(image)
    first = session.preview(picture, SOURCE, TARGETS, None, session.options(**FAST))
    assert first.computed and session.counts["mask"] == 1
    moved = session.preview(picture, SOURCE, TARGETS, first.seed, session.options(**FAST, mask_threshold=0.2))
    assert not moved.computed and session.counts["mask"] == 1
    assert moved.masks.pixel.sum() >= first.masks.pixel.sum()  # a lower threshold keeps at least as much
    assert session.preview(picture, SOURCE, TARGETS, first.seed + 1, session.options(**FAST), compute=False) is None

    edits = session.edit(picture, SOURCE, TARGETS, first.seed, session.options(**FAST))
    assert session.counts == {"mask": 1, "invert": 1, "edit": 2}
    assert [r.seed for r in edits.results] == [first.seed, first.seed] and edits.seed == first.seed
    again = session.edit(picture, SOURCE, TARGETS[:1], first.seed, session.options(**FAST, guidance_scale=3.0))
    assert session.counts["invert"] == 1, "guidance and targets changed: the inversion is reused"
    assert session.counts["mask"] == 2  # other targets: another mask pass
    assert any("inversion: reused" in n for n in again.notes)
    session.edit(picture, SOURCE, TARGETS[:1], first.seed, session.options(**FAST, strength=0.5))
    assert session.counts["invert"] == 2, "another encoding ratio needs another inversion"

    files = save_download(tmp_path, "scene", edits, "scene.png")
    assert [p.rsplit("/", 1)[1] for p in files] == ["scene_edited_1.png", "scene_edited_2.png", "scene_edited_1.json",
                                                    "scene_edited_2.json"]
    record = json.loads(open(files[2]).read())
    assert record["seed"] == first.seed and record["outputs"] == ["scene_edited_1.png"]
    assert record["jobs"][0]["target"] == TARGETS[0] and record["options"]["num_inference_steps"] == 6
    assert Image.open(files[0]).size == picture.size
    assert [row[0] for row in candidate_rows(edits)] == [1, 2]  # one candidate per target here


def test_brushed_mask_is_the_one_edited_with(editor, image):
    """A correction replaces the computed mask: the edit's mask is the painted one, and the sidecar says so."""
    session, picture = Session(editor), Image.fromarray(image)
    painted = np.zeros((32, 32), bool)
    painted[:8, :8] = True
    edits = session.edit(picture, SOURCE, TARGETS[:1], 5, session.options(**FAST), {0: painted})
    assert edits.corrected == [True]
    assert np.array_equal(np.asarray(edits.results[0].mask_images[0]) > 127, painted)


def test_corrections_add_and_remove():
    computed = np.zeros((16, 16), bool)
    computed[4:12, 4:12] = True
    layer = np.zeros((16, 16, 4), np.uint8)
    assert corrections([layer], computed) is None, "nothing painted: no correction"
    add = [int(ADD_COLOR[i : i + 2], 16) for i in (1, 3, 5)]
    remove = [int(REMOVE_COLOR[i : i + 2], 16) for i in (1, 3, 5)]
    layer[0:2, 0:2] = add + [200]
    layer[4:6, 4:6] = remove + [255]
    out = corrections([layer], computed)
    assert out[0:2, 0:2].all() and not out[4:6, 4:6].any()
    assert out.sum() == computed.sum() + 4 - 4
    big = np.asarray(Image.fromarray(layer, "RGBA").resize((32, 32), Image.NEAREST))  # a page that sent 2x layers
    assert np.array_equal(corrections([big], computed), out)


def test_overlay_tints_the_mask(editor, image):
    masks = editor.mask(image, SOURCE, TARGETS, seed=0, mask_threshold=0.3)
    view = overlay(Image.fromarray(image), masks, 0, editor.vae_scale_factor)
    inside = np.asarray(masks.mask_images[0]) > 127
    assert view.shape == image.shape and inside.any()
    assert not np.array_equal(view[inside], image[inside])


def test_upload_limits(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 200)).save(big)
    with pytest.raises(ValueError, match="above the limit"):
        read_upload(str(big), max_pixels=300 * 199)
    assert read_upload(str(big), max_pixels=300 * 200).size == (300, 200)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="unsupported image type: the upload is not an image"):
        read_upload(str(text))
    ico = tmp_path / "icon.ico"
    Image.new("RGB", (32, 32)).save(ico)
    with pytest.raises(ValueError, match="unsupported image type: the upload is a ICO image"):
        read_upload(str(ico))


def test_serve_command_is_registered():
    from typer.testing import CliRunner

    from diffedit.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0 and "--port" in result.output and "--max-upload-mb" in result.output
    assert "--inpaint-model" in result.output
    for choice, says in (("same", "for diffedit edit and batch"), ("/nowhere/inpainter", "not found")):
        result = CliRunner().invoke(app, ["serve", "--inpaint-model", choice])  # refused before any server starts
        assert result.exit_code == 2 and says in result.output, result.output
    for args, says in ((["--flow-decoder", "inverted"], "flow models only"),
                       (["-m", "shapeworld-flow", "--flow-decoder", "ddim"], "unknown --flow-decoder")):
        result = CliRunner().invoke(app, ["serve", *args])
        assert result.exit_code == 2 and says in result.output, result.output


def test_serve_offers_shapeworld_examples_with_the_embedded_models_only(monkeypatch):
    """The page's ShapeWorld examples are for the embedded models; a photo model's page has none."""
    import importlib
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from diffedit.cli import app

    serve = importlib.import_module("diffedit.cli.serve")  # the module (diffedit.cli exports the command by that name)

    launched = []
    monkeypatch.setattr(serve, "load_editor", lambda *a, **k: SimpleNamespace(name="m", device="cpu"))
    monkeypatch.setattr(serve, "launch", lambda editor, **kwargs: launched.append(kwargs["examples"]))
    for args in ([], ["-m", "shapeworld"], ["-m", "shapeworld-flow"], ["-m", "some/photo-model"]):
        result = CliRunner().invoke(app, ["serve", *args])
        assert result.exit_code == 0, result.output
    assert launched == [True, True, True, False]


def test_session_edits_with_a_flow_model(tmp_path):
    """`diffedit serve --model shapeworld-flow` (or an SD3 / FLUX folder): the page's mask and edit go through FlowEdit,
    which needs no inversion; the download's sidecar names the decoder."""
    from diffedit.flow.editor import FlowEditor
    from diffedit.loading import embedded_flow_path
    from diffedit.shapeworld.world import edit_cases

    case = edit_cases(1, 4)[0]
    session = Session(FlowEditor.from_pretrained(embedded_flow_path(), progress=False))
    picture = Image.fromarray(case.source_image)
    options = session.options(num_inference_steps=6, mask_noises=2)
    preview = session.preview(picture, case.source, [case.target], 3, options)
    assert preview.computed and preview.masks.pixel.any()
    edits = session.edit(picture, case.source, [case.target], preview.seed, options)
    assert session.counts == {"mask": 1, "invert": 0, "edit": 1}  # the stored map, and no inversion at all
    assert any(n.startswith("inversion: none") for n in edits.notes)
    edited = np.asarray(edits.results[0].images[0])
    inside = np.asarray(edits.results[0].mask_images[0]) > 127
    assert (edited[~inside] == case.source_image[~inside]).all() and (edited[inside] != case.source_image[inside]).any()
    record = json.loads(open(save_download(tmp_path, "scene", edits, "scene.png")[1]).read())
    assert record["decoder"] == "flowedit" and record["seed"] == 3
    # the page's decoder choice: the other decoder is another edit of the same mask, and its sidecar says which
    other = session.edit(picture, case.source, [case.target], preview.seed, options, decoder="inverted")
    assert other.results[0].decoder == "inverted" and session.counts["mask"] == 1
    assert any(n.startswith("inversion: inside the inverted flow decoder") for n in other.notes)
    assert not np.array_equal(np.asarray(other.results[0].images[0]), edited)
    record = json.loads(open(save_download(tmp_path / "b", "scene", other, "scene.png")[1]).read())
    assert record["decoder"] == "inverted"


def test_the_page_offers_a_decoder_only_for_a_flow_model(editor, tmp_path):
    """The decoder radio is on the page, visible, for a flow model, starting at the editor's own decoder (serve's
    --flow-decoder); hidden for any other model, whose session refuses a decoder."""
    pytest.importorskip("gradio")
    from diffedit.flow.editor import FlowEditor
    from diffedit.loading import embedded_flow_path
    from diffedit.webui import build_app

    def radio(session: Session) -> dict:
        app = build_app(session, downloads=tmp_path, examples=False)
        return next(c["props"] for c in app.config["components"] if c["props"].get("elem_id") == "flow-decoder")

    flow = FlowEditor.from_pretrained(embedded_flow_path(), progress=False, decoder="inverted")
    shown = radio(Session(flow))
    assert shown["visible"] is True and shown["value"] == "inverted"
    assert [c[0] for c in shown["choices"]] == ["flowedit", "inverted"]
    assert radio(Session(editor))["visible"] is False
    with pytest.raises(ValueError, match="flow models only"):
        Session(editor).edit(Image.new("RGB", (32, 32)), SOURCE, TARGETS[:1], 0, Session(editor).options(), decoder="inverted")

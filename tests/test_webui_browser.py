"""`diffedit serve`'s page end to end in a real headless Chromium (Debian's, driven by Playwright): upload a ShapeWorld
scene, preview its mask, move the threshold slider (no model run), edit with the embedded model, check the result
and its sidecar, edit again with other guidance (the inversion reused), then with a brushed mask. Screenshots go to
test-artifacts/webui/ (or $DIFFEDIT_TEST_ARTIFACTS/webui/)."""

import io
import json
import os
import re
import shutil
import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffedit import EditOptions
from diffedit.loading import embedded_inpaint_path
from diffedit.stages.candidates import plan_candidates

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARTIFACTS = Path(os.environ.get("DIFFEDIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts")) / "webui"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run does)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _covered(status: str) -> float:
    return float(re.search(r"the mask covers ([\d.]+)%", status).group(1))


def _links(page) -> list[str]:
    return page.locator("#download a").evaluate_all("els => els.map(e => e.href)")


def _new_sidecar(page, previous: list[str]) -> dict:
    """The JSON sidecar of the newest edit: the file list may render after the status, so wait until it changes."""
    page.wait_for_function("old => { const now = [...document.querySelectorAll('#download a')].map(e => e.href);"
                           " return now.length > 0 && now.every(u => !old.includes(u)); }", arg=previous,
                           timeout=180_000)
    return json.loads(_fetch(next(u for u in _links(page) if u.endswith(".json"))))


def _set_slider(page, elem_id: str, value: str) -> None:
    """Moves a slider as a drag does and waits for its number box to follow. Retried: a slider in an accordion just
    opened mounts with its value a moment after it shows, and on a busy machine a first move can land before that
    and be overwritten (CI saw the guidance box stay at 7.5)."""
    from playwright.sync_api import expect

    number = page.locator(f"#{elem_id} input[type=number]")
    expect(number).to_be_visible()
    for _ in range(10):
        page.locator(f"#{elem_id} input[type=range]").fill(value)
        try:
            expect(number).to_have_value(value, timeout=5_000)
            return
        except AssertionError:
            continue
    expect(number).to_have_value(value, timeout=1_000)


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("gradio")
    from diffedit import DiffEditor
    from diffedit.cli.serve import launch

    editor = DiffEditor.from_pretrained(None)
    port = _free_port()
    app = launch(editor, host="127.0.0.1", port=port, downloads=tmp_path_factory.mktemp("downloads"), block=False)
    yield f"http://127.0.0.1:{port}"
    app.close()


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page(viewport={"width": 1500, "height": 1000})
        tab.set_default_timeout(180_000)
        tab.goto(server)
        yield tab
        browser.close()


def test_page_previews_the_mask_edits_and_reuses_the_inversion(page, tmp_path):
    """Long because it is one visit to the page, step by step, as a user makes it."""
    from playwright.sync_api import expect

    from diffedit.shapeworld.world import sample_edit

    expect.set_options(timeout=180_000)  # waits for the page, generous on a busy CPU: no timing is asserted
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    case = sample_edit(np.random.default_rng(0), kind="color", num_objects=1)
    upload = tmp_path / "scene.png"
    Image.fromarray(case.source_image).save(upload)
    status = page.locator("#status")

    # 1. Prompts and a seed (an empty box draws one; fixed here, so the pixels checked below are always the same),
    #    then the upload: the mask appears on its own
    page.fill("#source textarea", case.source)
    page.fill("#targets textarea", case.target)
    page.fill("#seed textarea", "11")
    page.set_input_files("#input-image input[type=file]", str(upload))
    expect(status).to_contain_text("Mask computed")
    expect(page.locator("#mask-editor canvas").first).to_be_visible()
    seed = page.input_value("#seed textarea")
    assert seed == "11"
    before = _covered(status.inner_text())
    assert before > 0
    page.screenshot(path=str(ARTIFACTS / "1_mask_preview.png"), full_page=True)

    # 2. A lower threshold: the stored map thresholded again, no model run; the mask grows
    _set_slider(page, "threshold", "0.25")
    expect(status).to_contain_text("re-thresholded from the stored map")
    lower = _covered(status.inner_text())
    assert lower > before
    page.screenshot(path=str(ARTIFACTS / "2_threshold_moved.png"), full_page=True)

    # 3. The edit: before/after, candidates with their scores, download of the image and its sidecar
    page.click("#edit")
    expect(status).to_contain_text("Edited 1 target(s)")
    assert "mask: reused the stored map" in status.inner_text()
    expect(page.locator("#compare img")).to_have_count(2)
    expect(page.locator("#candidates")).to_contain_text("r=0.8 caption")  # every default candidate with its score
    table = page.locator("#candidates").inner_text()
    candidates = plan_candidates(EditOptions(), ["a source"], inpainter=embedded_inpaint_path().is_dir())  # "auto"
    assert all(c.label in table for c in candidates) and table.count("kept") == 1
    assert len(re.findall(r"^-?\d+\.\d+$", table, re.M)) == len(candidates)
    links = _links(page)
    png, sidecar = [next(u for u in links if u.endswith(suffix)) for suffix in (".png", ".json")]
    record = json.loads(_fetch(sidecar))
    assert str(record["seed"]) == seed == page.input_value("#seed textarea")
    assert record["options"]["mask_threshold"] == 0.25
    assert record["jobs"][0]["target"] == case.target and len(record["candidate_scores"][0]) == len(candidates)
    edited = np.asarray(Image.open(io.BytesIO(_fetch(png))).convert("RGB"))
    mask = np.zeros(edited.shape[:2], bool)
    obj = case.scene.objects[case.index]
    mask[max(0, obj.cy - obj.size):obj.cy + obj.size, max(0, obj.cx - obj.size):obj.cx + obj.size] = True
    assert edited.shape == case.source_image.shape
    assert np.array_equal(edited[~mask], case.source_image[~mask]), "outside the object, every pixel is the input's"
    assert np.abs(edited[mask].astype(int) - case.source_image[mask]).mean() > 10, "the object changed"
    page.locator("#compare").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "3_before_after.png"), full_page=True)

    # 4. Other guidance: the inversion and the mask are reused
    page.get_by_text("Edit options").click()
    _set_slider(page, "guidance", "5")
    page.click("#edit")
    expect(status).to_contain_text("inversion: reused the stored inversion")
    record = _new_sidecar(page, links)
    assert record["options"]["guidance_scale"] == 5.0 and str(record["seed"]) == seed
    page.screenshot(path=str(ARTIFACTS / "4_inversion_reused.png"), full_page=True)

    # 5. A brush stroke (adds to the mask) is the mask the next edit uses
    page.click("#mask-editor button[aria-label=Brush]")
    box = page.locator("#mask-editor canvas").last.bounding_box()
    x, y = box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.8
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y, steps=12)
    page.mouse.up()
    page.screenshot(path=str(ARTIFACTS / "5_brush_stroke.png"), full_page=True)
    links = _links(page)
    page.click("#edit")
    expect(status).to_contain_text("mask corrected with the brush")
    record = _new_sidecar(page, links)
    assert record["user_mask"] == "corrected with the web UI's brush"
    page.screenshot(path=str(ARTIFACTS / "6_brushed_edit.png"), full_page=True)

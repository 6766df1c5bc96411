"""`diffedit edit --instruction` / `--source auto`, `diffedit bench caption` and the benchmark rows with derived prompts."""

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from diffedit.bench.quality import run_quality
from diffedit.cli import app
from diffedit.instructions import rewrite_caption
from diffedit.results import EditOptions
from diffedit.shapeworld.world import Scene, ShapeObject

runner = CliRunner()


@pytest.fixture
def scene_png(tmp_path):
    scene = Scene("gray", (ShapeObject("red", "circle", 40, 64, 64),))
    path = tmp_path / "scene.png"
    Image.fromarray(scene.render()).save(path)
    return path


def test_edit_with_an_instruction_on_the_embedded_model(scene_png):
    instruction = "make the red circle blue"
    res = runner.invoke(app, ["edit", str(scene_png), "--instruction", instruction, "--seed", "0", "--preset", "fast",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    record = json.loads((scene_png.parent / "scene_edited.json").read_text())
    prompts = record["prompts"]
    assert (prompts["source_from"], prompts["target_from"], prompts["instruction"]) == ("captioner", "instruction", instruction)
    assert prompts["targets"] == [rewrite_caption(prompts["source"], instruction)]
    assert (record["jobs"][0]["source"], record["jobs"][0]["target"]) == (prompts["source"], prompts["targets"][0])
    assert f"source (captioner): {prompts['source']}" in res.output


@pytest.mark.parametrize("args, message", [
    (["--target", "a dog", "--instruction", "make it blue"], "got --target, --instruction"),
    (["--source", "a cat"], "give one of --target"),
    (["--source", "a cat", "--source-set", "cat", "--target", "a dog"], "one of the two"),
    (["--source-set", "cat", "--instruction", "make it blue"], "not --source-set"),
    (["--source", "a cat", "--target-set", "dog", "--prompt-lm", "no/such/lm"], "not a folder"),
    (["--target", "a dog"], "--source auto"),
    (["--instruction", "draw a cat"], "should start with"),
    (["--source", "auto", "--target", "a dog", "--captioner", "no/such/folder"], "not a folder"),
])
def test_prompt_misuse_exits_2_before_the_model_loads(scene_png, args, message):
    res = runner.invoke(app, ["edit", str(scene_png), "--model", "no/such/model", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not (scene_png.parent / "scene_edited.png").exists()


def test_auto_source_needs_a_captioner_with_another_model(scene_png, tiny_model_dir):
    res = runner.invoke(app, ["edit", str(scene_png), "--source", "auto", "--target", "a blue circle", "--model",
                              str(tiny_model_dir), "--quiet"])
    assert res.exit_code == 2 and "needs a captioner" in res.output, res.output


def test_bench_caption_prints_accuracy_and_seconds():
    res = runner.invoke(app, ["bench", "caption", "--scenes", "2", "--seed", "1", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "2 scenes (seed 1)" in res.output and "s / image" in res.output
    assert all(part in res.output for part in ("exact", "background", "objects"))


def test_quality_rows_with_derived_prompts_note_how_they_came_out():
    options = EditOptions.preset("fast")
    report = run_quality(None, cases=2, seed=3, methods=["ours_auto_source", "ours_instruction"], options=options,
                         progress=False)
    for name in ("ours_auto_source", "ours_instruction"):
        notes = report["methods"][name]["prompts"]
        assert 0 <= notes["caption_exact"] <= 2 and 0 <= notes["not_derived"] <= 2
        assert len(report["methods"][name]["rows"]) == 2
    auto = report["methods"]["ours_auto_source"]["prompts"]
    assert auto["target_exact"] == 2 - auto["not_derived"]  # the case's own target, unless it equals the caption


def test_the_docs_example_runs_as_written(tmp_path, monkeypatch):
    """docs/prompts.md: the scene its bash block draws, then its Python block, as a reader runs them."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "prompts.md").read_text()
    monkeypatch.chdir(tmp_path)
    exec(re.search(r'python -c "(.*?)"', text, re.S).group(1), {})
    exec(compile(re.findall(r"```python\n(.*?)```", text, re.S)[0], "docs/prompts.md", "exec"), {})
    assert Image.open(tmp_path / "scene_blue.png").size == (128, 128)

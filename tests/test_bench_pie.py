"""PIE-Bench (issue 20): the mapping file's masks and prompts, the scoring of one edit, and `diffedit bench pie` end to
end on a synthetic PIE-Bench folder of ShapeWorld scenes with the embedded model and tiny random scoring networks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from tiny import tiny_tokenizer
from tiny_scorers import save_random_lpips, save_tiny_clip, save_tiny_dino
from typer.testing import CliRunner

from diffedit import DiffEditor, EditOptions
from diffedit.bench.pie import PIE_METRICS, _word_tokens, format_pie, load_scorers, run_pie, score_pie_edit
from diffedit.bench.pie import source_word_attention
from diffedit.bench.pie_data import decode_rle, encode_rle, load_pie, split_prompt
from diffedit.cli.bench import bench_app
from diffedit.shapeworld.world import edit_cases

PIE_TYPE = {"color": "6", "shape": "1", "both": "0"}  # change color, change object, random


def bracketed(words: list[str], other: list[str]) -> str:
    return " ".join(f"[{w}]" if w != o else w for w, o in zip(words, other))


def write_pie(folder, cases) -> dict:
    """A PIE-Bench data folder: the cases' source images as PNGs under annotation_images/, and a mapping file with
    bracketed prompts, the changed words as blended_word and the true masks run-length encoded."""
    mapping = {}
    for i, case in enumerate(cases):
        path = f"{PIE_TYPE[case.kind]}_synthetic/{i:012d}.png"
        (folder / "annotation_images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(case.source_image).save(folder / "annotation_images" / path)
        s, t = case.source.split(), case.target.split()
        changed = [(a, b) for a, b in zip(s, t) if a != b]
        mapping[f"{i:012d}"] = {
            "image_path": path, "original_prompt": bracketed(s, t), "editing_prompt": bracketed(t, s),
            "editing_instruction": f"make the {changed[0][0]} {changed[0][1]}", "editing_type_id": PIE_TYPE[case.kind],
            "blended_word": f"{changed[0][0]} {changed[0][1]}", "mask": encode_rle(case.mask),
        }
    (folder / "mapping_file.json").write_text(json.dumps(mapping))
    return mapping


@pytest.fixture(scope="module")
def cases():
    return edit_cases(3, seed=5)  # one colour, one shape, one colour-and-shape edit


@pytest.fixture(scope="module")
def pie_dir(tmp_path_factory, cases):
    folder = tmp_path_factory.mktemp("pie") / "data"
    write_pie(folder, cases)
    return folder


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    save_random_lpips(root / "lpips", "squeeze", seed=1)  # PIE-Bench's LPIPS
    save_random_lpips(root / "lpips", "alex", seed=2)  # StyleDiffusion's NS-LPIPS
    return {"lpips": root / "lpips", "clip": save_tiny_clip(root / "clip"), "dino": save_tiny_dino(root / "dino")}


@pytest.fixture(scope="module")
def embedded():
    return DiffEditor.from_pretrained(progress=False)


# ---------------------------------------------------------------- the mapping file


def test_decode_rle_known_runs_and_border():
    mask = decode_rle([1, 2, 5, 2], (2, 4), border=False)  # row-major: pixels 1, 2 and 5, 6
    assert mask.tolist() == [[False, True, True, False], [False, True, True, False]]
    assert decode_rle([6, 10], (2, 4), border=False).ravel().tolist() == [False] * 6 + [True] * 2  # cut at the end
    framed = decode_rle([], (5, 6))
    assert framed.sum() == 2 * 6 + 2 * 3 and not framed[1:-1, 1:-1].any()  # PIE-Bench marks the border as edited
    with pytest.raises(ValueError, match="even-length"):
        decode_rle([1, 2, 3], (2, 4))


def test_encode_rle_round_trips(cases):
    rng = np.random.default_rng(0)
    for mask in [c.mask for c in cases] + [rng.random((17, 23)) > 0.5, np.ones((4, 4), bool), np.zeros((4, 4), bool)]:
        runs = encode_rle(mask)
        assert np.array_equal(decode_rle(runs, mask.shape, border=False), mask)
        assert sum(runs[1::2]) == mask.sum()
    assert encode_rle(np.array([[0, 1, 1], [1, 0, 0]], bool)) == [1, 3]  # a run crosses the row end


def test_split_prompt_keeps_the_bracketed_words():
    assert split_prompt("a [cat] sitting on [a wooden] chair") == ("a cat sitting on a wooden chair", ("cat", "a wooden"))
    assert split_prompt("a photo") == ("a photo", ())


def test_load_pie_reads_entries_types_and_limit(pie_dir, cases):
    entries = load_pie(pie_dir)
    assert [e.source for e in entries] == [c.source for c in cases]
    assert [e.target for e in entries] == [c.target for c in cases]
    first = entries[0]
    assert first.source_words and all(w in first.source.split() for w in first.source_words)
    assert first.blended_words[0] in first.source_words and first.blended_words[1] in first.target_words
    assert np.array_equal(first.image(), cases[0].source_image)
    mask = first.mask((128, 128))
    assert np.array_equal(mask[1:-1, 1:-1], cases[0].mask[1:-1, 1:-1]) and mask[0].all()
    assert len(load_pie(pie_dir, limit=2)) == 2
    kinds = load_pie(pie_dir, types=["6"])
    assert kinds and all(e.editing_type == "6" for e in kinds)
    with pytest.raises(ValueError, match="0-9"):
        load_pie(pie_dir, types=["12"])


def test_load_pie_says_what_is_missing(tmp_path, pie_dir):
    with pytest.raises(FileNotFoundError, match="mapping_file.json"):
        load_pie(tmp_path)
    (tmp_path / "mapping_file.json").write_text((pie_dir / "mapping_file.json").read_text())
    with pytest.raises(FileNotFoundError, match="3 image"):
        load_pie(tmp_path)
    (tmp_path / "mapping_file.json").write_text(json.dumps({"0": {"image_path": "x.png"}}))
    with pytest.raises(ValueError, match="lacks original_prompt, editing_prompt, mask"):
        load_pie(tmp_path)


# ---------------------------------------------------------------- one edit's scores


def test_word_tokens_find_a_words_positions():
    tok = tiny_tokenizer(16)  # each of "a", "red", "circle", "photo", "of", "bowl" is one token
    assert _word_tokens(tok, "a red circle", "red") == [2]
    assert _word_tokens(tok, "a photo of a bowl.", "bowl") == [5]
    assert _word_tokens(tok, "a xy circle", "circle") == [4]  # "xy" is two letter tokens
    assert _word_tokens(tok, "a red circle", "blue") == []


def test_the_source_itself_scores_perfectly(weights, cases):
    scorers = load_scorers(weights["lpips"], weights["clip"], weights["dino"])
    assert (scorers.lpips.net, scorers.ns_lpips.net, scorers.notes) == ("squeeze", "alex", [])
    case = cases[0]
    selected = case.mask.astype(np.float32)
    row = score_pie_edit(scorers, case.source_image, case.source_image, case.mask, case.target, selected)
    assert set(row) == set(PIE_METRICS)
    assert row["psnr"] == 100.0 and row["mse"] == 0.0 and row["ssim"] == pytest.approx(1.0)
    assert row["lpips"] == pytest.approx(0.0, abs=1e-6) and row["ns_lpips"] == pytest.approx(0.0, abs=1e-6)
    assert row["structure_distance"] == pytest.approx(0.0, abs=1e-10)
    assert row["clip_whole"] == pytest.approx(scorers.clip(case.source_image, case.target))
    truth = score_pie_edit(scorers, case.source_image, case.target_image, case.mask, case.target, selected)
    assert truth["psnr"] == 100.0 and truth["lpips"] == pytest.approx(0.0, abs=1e-6)  # the truth changes M only
    assert truth["structure_distance"] > 0 and truth["clip_edited"] is not None


def test_source_word_attention_is_a_normalised_map(embedded, cases):
    case = cases[0]
    word = next(a for a, b in zip(case.source.split(), case.target.split()) if a != b)
    amap = source_word_attention(embedded, case.source_image, case.source, word, steps=4)
    assert amap.shape == (128, 128) and amap.min() >= 0 and amap.max() == pytest.approx(1.0)
    assert source_word_attention(embedded, case.source_image, case.source, "elephant", steps=4) is None


# ---------------------------------------------------------------- the benchmark end to end


def test_bench_pie_cli_prints_pie_benchs_table(pie_dir, weights, tmp_path):
    out = tmp_path / "pie.json"
    res = CliRunner().invoke(bench_app, [
        "pie", "--data", str(pie_dir), "--methods", "ours,gt_mask", "--preset", "fast", "--lpips", str(weights["lpips"]),
        "--clip", str(weights["clip"]), "--dino", str(weights["dino"]), "--json", str(out), "--quiet", "--threads", "1",
    ])
    assert res.exit_code == 0, res.output
    assert "PIE-Bench" in res.output and "NS-LPIPS x1e3" in res.output and "note" not in res.output
    report = json.loads(out.read_text())
    assert (report["entries"], report["lpips_net"], report["ns_lpips_net"]) == (3, "squeeze", "alex")
    for name in ("ours", "gt_mask"):
        m = report["methods"][name]
        assert len(m["rows"]) == 3 and m["summary"]["failed"] == 0 and m["seconds_per_edit"] > 0
        for metric in PIE_METRICS:
            assert m["summary"][metric] == pytest.approx(np.mean([r[metric] for r in m["rows"]])), (name, metric)
        for r in m["rows"]:
            assert 0 <= r["mse"] < 1 and r["psnr"] == pytest.approx(min(100.0, 10 * np.log10(1 / r["mse"])) if r["mse"]
                                                                    else 100.0)
        assert set(m["by_type"]) == {"0", "1", "6"}
    # decoding inside the annotated mask leaves the unedited part bit for bit: PIE-Bench's background metrics are perfect
    gt = report["methods"]["gt_mask"]["summary"]
    assert (gt["mse"], gt["psnr"], gt["ssim"]) == (0.0, 100.0, pytest.approx(1.0)) and gt["lpips"] < 1e-6
    row = next(line for line in res.output.splitlines() if line.strip().startswith("gt_mask"))
    assert "-" not in row.split()[1:]  # every column has a figure


def test_run_pie_without_networks_skips_their_metrics(pie_dir, embedded):
    report = run_pie(pie_dir, embedded, limit=1, methods=["ours", "sdedit", "diffusers"], baseline_steps=2,
                     options=EditOptions.preset("fast"), progress=False)
    for name in ("ours", "sdedit", "diffusers"):
        summary = report["methods"][name]["summary"]
        assert summary["n"] == 1 and summary["psnr"] is not None and summary["ssim"] is not None
        assert all(summary[m] is None for m in ("lpips", "ns_lpips", "clip_whole", "clip_edited", "structure_distance"))
    assert report["methods"]["sdedit"]["summary"]["mse"] > 0  # SDEdit repaints everywhere, the background too
    text = format_pie(report)
    assert "skipped" in text and all(line.split().count("-") == 5 for line in text.splitlines()[2:5])
    with pytest.raises(ValueError, match="unknown method"):
        run_pie(pie_dir, embedded, methods=["magic"], progress=False)


def test_bench_pie_cli_errors(pie_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(bench_app, ["pie", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "mapping_file.json" in res.output
    res = runner.invoke(bench_app, ["pie", "--data", str(pie_dir), "--lpips", str(tmp_path)])
    assert res.exit_code == 2 and "squeeze.pth" in res.output
    res = runner.invoke(bench_app, ["pie", "--data", str(pie_dir), "--limit", "0"])
    assert res.exit_code == 2 and "--limit" in res.output

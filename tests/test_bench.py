"""Benchmarks: speed (ours vs diffusers' pipeline), ShapeEdit quality, the baselines, and their CLI."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffedit.bench.baselines import diffusers_edit, diffusers_pipeline, sdedit
from diffedit.cli.bench import bench_app
from diffedit.bench.flow_rows import FLOW_METHODS
from diffedit.bench.quality import INPAINT_METHODS, METHODS, format_quality, format_quality_markdown, run_quality
from diffedit.bench.speed import _PeakMemory, format_speed, run_speed
from diffedit.results import EditOptions


@pytest.fixture(scope="module")
def shapeworld_tiny_dir(tmp_path_factory):
    """An untrained ShapeWorld-shaped model folder (config "tiny": 128 px -> 16x16 latents, fast)."""
    from diffedit.shapeworld.model import build_components, save_model

    torch.manual_seed(0)
    return save_model(build_components("tiny"), tmp_path_factory.mktemp("sw_tiny") / "model", dtype=torch.float32)


def test_run_speed_times_the_default_one_decoding_and_diffusers(tmp_path):
    report = run_speed("tiny", size=32, steps=4, repeats=1, json_path=tmp_path / "speed.json", verbose=False)
    ours, one, theirs = (report["methods"][m] for m in ("default", "one_decoding", "diffusers"))
    assert set(ours["phases_s"]) >= {"vae_encode", "mask", "inversion", "decoding", "vae_decode", "rerank"}
    assert set(theirs["phases_s"]) >= {"generate_mask", "invert", "call"}
    assert all(v >= 0 for f in (ours, one) for v in f["phases_s"].values())
    for m in ("default", "one_decoding"):
        assert report["ratios"][m] == pytest.approx(theirs["total_s"] / report["methods"][m]["total_s"], rel=1e-3)
    # one_decoding does diffusers' work in fewer rows (2n mask rows instead of 4n, batch-1 inversion) and one VAE
    # encode instead of n + 1
    rows_one, rows_theirs = one["rows_per_call"], theirs["rows_per_call"]
    n, steps = 10, int(4 * 0.8)
    assert rows_one["unet"] == 2 * n + steps + 2 * steps
    assert rows_theirs["unet"] == 4 * n + 2 * steps + 2 * steps
    assert (rows_one["vae_encoder"], rows_theirs["vae_encoder"]) == (1, n + 1)
    # the default is what EditOptions() runs: its own steps and candidates, scored (a VAE decode per candidate)
    default = EditOptions()
    assert report["options"]["default"]["num_inference_steps"] == default.num_inference_steps
    assert ours["rows_per_call"]["vae_decoder"] == 1 + len(default.extra_strengths) + int(default.caption_candidate)
    assert json.loads((tmp_path / "speed.json").read_text())["ratios"] == report["ratios"]
    text = format_speed(report)
    assert "diffusers / x" in text and "one_decoding" in text and "rerank" in text


def test_run_speed_batch_counts_edits_per_second():
    report = run_speed("tiny", size=32, steps=2, mask_noises=2, batch=2, repeats=1, verbose=False,
                       methods=("one_decoding", "diffusers"))
    assert report["methods"]["one_decoding"]["rows_per_call"]["vae_encoder"] == 2  # one call encodes both images once
    assert report["methods"]["diffusers"]["rows_per_call"]["vae_encoder"] == 2 * (2 + 1)
    for name in ("one_decoding", "diffusers"):
        assert report["methods"][name]["edits_per_s"] == pytest.approx(2 / report["methods"][name]["total_s"], rel=1e-2)
    with pytest.raises(ValueError, match="methods"):
        run_speed("tiny", size=32, steps=2, repeats=1, methods=("default",), verbose=False)


def test_run_speed_refuses_compile_on_cpu():
    with pytest.raises(ValueError, match="CUDA"):
        run_speed("tiny", size=32, steps=2, repeats=1, compile=True, verbose=False)


def test_peak_memory_on_cpu_is_the_growth_of_the_block():
    with _PeakMemory(torch.device("cpu")) as mem:
        block = torch.ones(16 * 2**20)  # 64 MiB: above glibc's largest mmap threshold, so fresh pages
    del block
    if mem.peak is None:
        pytest.skip("no resettable VmHWM here (not Linux, or /proc/self/clear_refs not writable)")
    assert 60 / 1024 <= mem.peak < 1.0, mem.peak  # GiB: the block's 64 MiB, not what the process held before


@pytest.mark.slow  # every method of the benchmark, 15 x 3 edits: ~12 s (test_cli_speed_and_quality runs two)
def test_run_quality_all_methods(shapeworld_tiny_dir, tmp_path):
    cheap = EditOptions(mask_noises=2, rerank_noises=2, rerank_levels=(0.5, 0.7))  # every code path, fewer UNet rows
    report = run_quality(
        str(shapeworld_tiny_dir), cases=3, steps=4, batch_size=3, options=cheap,
        json_path=tmp_path / "q.json", plot_path=tmp_path / "q.png", panel_path=tmp_path / "worst.png", progress=False,
    )
    # this model has no inpainter, and 'all' on a model other than the embedded one has no ShapeWorld flow rows
    assert list(report["methods"]) == [m for m in METHODS if m not in INPAINT_METHODS + FLOW_METHODS]
    for name, m in report["methods"].items():
        overall = m["summary"]["overall"]
        assert overall["n"] == 3 and len(m["rows"]) == 3
        for key in ("background_psnr", "target_psnr", "success", "ghost_free", "clean", "ghost_pixels", "drawn_size"):
            assert math.isfinite(overall[key]), (name, key)
        assert (overall["mask_iou"] is None) == (name == "sdedit")
        assert m["seconds_per_edit"] > 0
        assert set(m["summary"]["by_kind"]) == {"color", "shape", "both"}
    assert report["methods"]["gt_mask"]["summary"]["overall"]["mask_iou"] == 1.0  # the user mask is reported as given
    saved = json.loads((tmp_path / "q.json").read_text())
    assert saved["methods"]["ours"]["summary"] == report["methods"]["ours"]["summary"]
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(tmp_path / "worst.png").size[1] > 3 * 128  # three cases, one row each
    assert "ghost_free % by kind" in format_quality(report) and "ghost-free" in format_quality_markdown(report)
    assert "drawn_size by kind" in format_quality(report) and "drawn size" in format_quality_markdown(report)


def test_run_quality_inpainting_rows_need_an_inpainter(shapeworld_tiny_dir):
    from diffedit import DiffEditor
    from diffedit.shapeworld.train_inpaint import widen_unet

    editor = DiffEditor.from_pretrained(str(shapeworld_tiny_dir), progress=False)
    with pytest.raises(ValueError, match="need an inpainting model"):
        run_quality(editor, cases=1, methods=["ours", "ours_inpaint"], progress=False)
    editor.set_inpainter(widen_unet(editor.unet))
    cheap = EditOptions(mask_noises=2, rerank_noises=1, rerank_levels=(0.5,))
    report = run_quality(editor, cases=2, steps=3, options=cheap, methods=list(INPAINT_METHODS), progress=False)
    assert list(report["methods"]) == list(INPAINT_METHODS)
    assert report["methods"]["gt_mask_inpaint"]["summary"]["overall"]["mask_iou"] == 1.0


def test_cli_quality_takes_an_inpainting_model_and_names_it(shapeworld_tiny_dir, tmp_path):
    from diffedit import DiffEditor
    from diffedit.shapeworld.train_inpaint import widen_unet

    widen_unet(DiffEditor.from_pretrained(str(shapeworld_tiny_dir), progress=False).unet).save_pretrained(tmp_path / "inp")
    common = ["quality", "--model", str(shapeworld_tiny_dir), "--cases", "2", "--steps", "2", "--quiet",
              "--set", "mask_noises=2", "--set", "rerank_noises=1", "--set", "rerank_levels=[0.5]"]
    res = CliRunner().invoke(bench_app, [*common, "--methods", "ours,ours_inpaint", "--inpaint-model", str(tmp_path / "inp"),
                                         "--json", str(tmp_path / "a.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["inpainter"] == str(tmp_path / "inp") and set(report["methods"]) == {"ours", "ours_inpaint"}
    res = CliRunner().invoke(bench_app, [*common, "--methods", "ours_inpaint"])  # this model ships no inpainter
    assert res.exit_code == 2 and "need an inpainting model" in res.output
    res = CliRunner().invoke(bench_app, [*common, "--methods", "ours", "--inpaint-model", str(tmp_path / "nowhere")])
    assert res.exit_code == 2 and "not found" in res.output
    with pytest.raises(ValueError, match="no inpainting model fits"):
        run_quality("tiny", cases=1, methods=["ours"], inpaint_model=str(tmp_path / "inp"), progress=False)


def test_compare_panel_shows_two_methods_on_typical_and_worst_cases(shapeworld_tiny_dir, tmp_path):
    cheap = EditOptions(mask_noises=2, rerank_noises=1, rerank_levels=(0.5,))
    with pytest.raises(ValueError, match="two methods"):
        run_quality(str(shapeworld_tiny_dir), cases=1, methods=["ours"], compare_panel_path=tmp_path / "c.png", progress=False)
    run_quality(str(shapeworld_tiny_dir), cases=8, steps=2, options=cheap, methods=["ours_one_candidate", "gt_mask"],
                compare_panel_path=tmp_path / "c.png", progress=False)
    from diffedit.bench.panels import typical_cases
    from diffedit.shapeworld.world import edit_cases

    picked = typical_cases(edit_cases(8, 0))
    assert [edit_cases(8, 0)[i].kind for i in picked] == ["color"] * 2 + ["shape"] * 2 + ["both"] * 2
    # 6 typical rows + the 2 other cases (of 8) as the worst, 4 columns of 128 px with 4 px gaps
    assert Image.open(tmp_path / "c.png").size == (4 * 128 + 3 * 4, 8 * 128 + 7 * 4)


def test_flow_rows_edit_with_the_flow_model(shapeworld_tiny_dir, tmp_path):
    """The flow rows run the flow editor of `flow_model` (here a ShapeWorld-shaped tiny flow UNet); without our mask
    FlowEdit may change the whole image, with it the background outside the mask is the input's."""
    from diffedit.shapeworld.model import build_components
    from diffedit.shapeworld.train_flow import flow_scheduler, save_flow_model

    torch.manual_seed(1)
    flow = save_flow_model(dict(build_components("tiny"), scheduler=flow_scheduler()), tmp_path / "flow",
                           shapeworld_tiny_dir, [], {})
    report = run_quality(str(shapeworld_tiny_dir), cases=2, methods=list(FLOW_METHODS), flow_model=flow,
                         options=EditOptions(mask_noises=2), progress=False)
    rows = {m: report["methods"][m]["summary"]["overall"] for m in FLOW_METHODS}
    assert rows["flowedit_no_mask"]["mask_iou"] is None
    assert all(math.isfinite(rows[m]["mask_iou"]) for m in ("flowedit", "flow_inverted"))
    assert rows["flowedit"]["background_psnr"] > rows["flowedit_no_mask"]["background_psnr"]
    assert all(report["methods"][m]["seconds_per_edit"] > 0 for m in FLOW_METHODS)


def test_run_quality_rejects_unknown_methods(shapeworld_tiny_dir):
    with pytest.raises(ValueError, match="unknown method"):
        run_quality(str(shapeworld_tiny_dir), cases=1, methods=["ours", "magic"], progress=False)


def test_sdedit_changes_everything_ours_keeps_outside(editor, image):
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    outside = mask == 0
    ours = np.asarray(editor.edit(image, "a red square", "a blue circle", mask=mask, seed=0, num_inference_steps=4).image)
    theirs = np.asarray(sdedit(editor, image, "a blue circle", sources="a red square", seed=0, num_inference_steps=4)[0])
    assert np.array_equal(ours[outside], image[outside])
    changed = (theirs.astype(int) != image.astype(int)).any(-1)
    assert changed.mean() > 0.9
    again = np.asarray(sdedit(editor, image, "a blue circle", sources="a red square", seed=0, num_inference_steps=4)[0])
    assert np.array_equal(theirs, again)  # deterministic for a seed


def test_diffusers_edit_returns_image_and_latent_mask(editor, image):
    pipe = diffusers_pipeline(editor)
    timings = {}
    out, mask = diffusers_edit(pipe, image, "a red square", "a blue circle", seed=0, num_inference_steps=4,
                               mask_noises=2, timings=timings)
    assert out.size == (32, 32) and mask.shape == (16, 16) and mask.dtype == bool
    assert set(timings) == {"generate_mask", "invert", "call"}


def test_cli_speed_and_quality(shapeworld_tiny_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(bench_app, ["speed", "--model", "tiny", "--device", "cpu", "--size", "32", "--steps", "2",
                                    "--mask-noises", "2", "--repeats", "1", "--methods", "fast,diffusers",
                                    "--json", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert "diffusers / x" in res.output and set(json.loads((tmp_path / "s.json").read_text())["ratios"]) == {"fast"}
    res = runner.invoke(bench_app, ["speed", "--model", "tiny", "--device", "cpu", "--methods", "default,warp,diffusers"])
    assert res.exit_code == 2 and "warp" in res.output

    res = runner.invoke(bench_app, ["quality", "--model", str(shapeworld_tiny_dir), "--cases", "3", "--steps", "2",
                                    "--methods", "ours,sdedit", "--json", str(tmp_path / "q.json"),
                                    "--plot", str(tmp_path / "q.png"), "--markdown", str(tmp_path / "q.md"), "--quiet"])
    assert res.exit_code == 0, res.output
    assert set(json.loads((tmp_path / "q.json").read_text())["methods"]) == {"ours", "sdedit"}
    assert (tmp_path / "q.png").exists()
    table = (tmp_path / "q.md").read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| `ours` |") and table[3].startswith("| `sdedit` | - |")

    res = runner.invoke(bench_app, ["quality", "--model", str(shapeworld_tiny_dir), "--methods", "magic", "--quiet"])
    assert res.exit_code == 2 and "unknown method" in res.output
    res = runner.invoke(bench_app, ["speed", "--model", "tiny", "--device", "cpu", "--compile"])
    assert res.exit_code == 2 and "CUDA" in res.output


def test_mask_sweep_scores_every_setting_from_one_pass():
    from diffedit.bench.masks import format_mask_sweep, run_mask_sweep

    grid = {"mask_reference": [None], "clamp": [("quantile", 0.99), ("mean_ratio", 3.0)], "mask_smooth": [0.0, 1.0],
            "mask_threshold": [0.3, 0.5, 0.99], "mask_dilate": [0]}
    report = run_mask_sweep("tiny", cases=2, seed=0, batch_size=2, steps=4, grid=grid, progress=False)
    rows = report["rows"]
    assert len(rows) == 12
    assert [r["iou"] for r in rows] == sorted((r["iou"] for r in rows), reverse=True)
    assert all(0.0 <= r["iou"] <= 1.0 for r in rows)
    # a lower threshold gives a larger mask, so the IoUs of one setting at different thresholds differ
    by_threshold = {r["mask_threshold"]: r["iou"] for r in rows if r["clamp"] == "quantile" and r["mask_smooth"] == 0}
    assert len(set(by_threshold.values())) > 1
    assert "current defaults" in format_mask_sweep(report, top=1)
    assert 0.0 < report["cell_upper_bound_iou"] <= 1.0


def test_cell_upper_bound_is_exact_for_cell_aligned_masks_and_below_one_otherwise():
    from diffedit.bench.masks import cell_upper_bound_iou

    square = np.zeros((32, 32), bool)
    square[8:24, 8:16] = True  # whole 8-px cells
    assert cell_upper_bound_iou([square], 8) == 1.0
    yy, xx = np.mgrid[:32, :32]
    disc = (yy - 13.5) ** 2 + (xx - 17.5) ** 2 < 9.0**2
    bound = cell_upper_bound_iou([disc], 8)
    assert 0.3 < bound < 1.0
    assert cell_upper_bound_iou([square, disc], 8) == pytest.approx((1.0 + bound) / 2)


def test_composite_sweep_pastes_every_setting_from_one_edit(shapeworld_tiny_dir):
    from diffedit.bench.masks import format_composite_sweep, run_composite_sweep

    report = run_composite_sweep(str(shapeworld_tiny_dir), cases=2, seed=0, batch_size=2, steps=4, feathers=(0, 2),
                                 dilations=(0, 1), progress=False)
    settings = report["settings"]
    assert set(settings) == {"none"} | {f"dilate {d} px, feather {f} px" for d in (0, 1) for f in (0, 2)}
    assert all(s["overall"]["n"] == 2 for s in settings.values())
    # the composite keeps the input outside the mask, so it can only help background PSNR over "none"
    none_bg = settings["none"]["overall"]["background_psnr"]
    assert settings["dilate 0 px, feather 0 px"]["overall"]["background_psnr"] >= none_bg
    # a wider ramp outside the mask pastes more of the edit over the input, so background PSNR does not rise
    assert (settings["dilate 0 px, feather 2 px"]["overall"]["background_psnr"]
            <= settings["dilate 0 px, feather 0 px"]["overall"]["background_psnr"])
    text = format_composite_sweep(report)
    assert "<- default" in text and "none" in text


def test_cli_quality_default_methods_are_all_of_them(monkeypatch):
    import diffedit.bench.quality as quality

    seen = {}
    monkeypatch.setattr(quality, "run_quality", lambda model, **kw: seen.update(kw))
    for args, expected in ([], None), (["--methods", "ours, gt_mask"], ["ours", "gt_mask"]):
        res = CliRunner().invoke(bench_app, ["quality", "--quiet", *args])
        assert res.exit_code == 0, res.output
        assert seen["methods"] == expected  # None: run_quality's METHODS, the one list of them


def test_cli_defaults_are_the_library_functions():
    import inspect

    import typer.main

    from diffedit.bench import masks, outline, quality, speed

    library = {"quality": quality.run_quality, "speed": speed.run_speed, "masks": masks.run_mask_sweep,
               "composite": masks.run_composite_sweep, "outline": outline.run_outline}
    renamed = {"batch": "batch_size"}
    group = typer.main.get_command(bench_app)
    for name, function in library.items():
        signature = inspect.signature(function).parameters
        checked = 0
        for param in group.commands[name].params:
            key = renamed.get(param.name, param.name)
            if key in signature and key not in ("model", "device", "dtype", "methods"):  # the CLI resolves these itself
                assert param.default == signature[key].default, (name, param.name)
                checked += 1
        assert checked >= 3, name

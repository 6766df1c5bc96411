"""Real-image metrics (issue 20): PIE-Bench's masked PSNR / MSE / SSIM, LPIPS from local weights, NS-LPIPS, CLIP
similarity and the DINO structure distance, on hand-computable cases and tiny random networks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tiny_scorers import save_random_lpips, save_tiny_clip, save_tiny_dino

from diffedit.bench.feature_metrics import ClipScorer, StructureDistance, key_self_similarity
from diffedit.bench.real_metrics import (
    LPIPS, LPIPS_NETS, load_lpips, lpips_distance, lpips_from_features, masked_unit, mse, ns_lpips, psnr, ssim,
)

RNG = np.random.default_rng(0)


def noise(h: int = 32, w: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- MSE, PSNR, SSIM outside the mask


def test_mse_and_psnr_count_the_zeroed_region_as_pie_bench_does():
    a = noise(8, 8)
    a = np.clip(a, 0, 200).astype(np.uint8)
    b = a.copy()
    b[:4] += 20  # the top half differs by 20
    top = np.zeros((8, 8), bool)
    top[:4] = True
    assert mse(a, b) == pytest.approx((20 / 255) ** 2 / 2)  # half the pixels differ
    assert mse(a, b, keep=~top) == 0.0 and psnr(a, b, keep=~top) == math.inf
    assert mse(a, b, keep=top) == pytest.approx((20 / 255) ** 2 / 2)  # the zeroed bottom still counts in the mean
    assert psnr(a, b, keep=top) == pytest.approx(10 * math.log10(2 * (255 / 20) ** 2))
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / mse(a, b)))
    with pytest.raises(ValueError, match="mask shape"):
        mse(a, b, keep=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:4])
    with pytest.raises(ValueError, match="uint8"):
        mse(a.astype(np.float32), b.astype(np.float32))


def test_masked_unit_zeroes_outside_keep():
    a = noise(4, 5)
    keep = np.zeros((4, 5), bool)
    keep[1, 2] = True
    x = masked_unit(a, keep)
    assert x.shape == (1, 3, 4, 5)
    assert torch.count_nonzero(x[0, :, 1, 2]) == np.count_nonzero(a[1, 2]) and torch.count_nonzero(x) <= 3
    assert torch.allclose(x[0, :, 1, 2], torch.from_numpy(a[1, 2] / 255.0))


def _ssim_by_loops(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """SSIM written out: every valid window position and channel, weighted statistics by explicit sums."""
    d = np.arange(window) - (window - 1) / 2
    g = np.exp(-(d**2) / (2 * sigma**2))
    g = np.outer(g, g) / g.sum() ** 2
    x, y = a / 255.0, b / 255.0
    values = []
    for c in range(3):
        for i in range(a.shape[0] - window + 1):
            for j in range(a.shape[1] - window + 1):
                px, py = x[i : i + window, j : j + window, c], y[i : i + window, j : j + window, c]
                mx, my = (g * px).sum(), (g * py).sum()
                vx, vy = (g * px * px).sum() - mx**2, (g * py * py).sum() - my**2
                cxy = (g * px * py).sum() - mx * my
                values.append((2 * mx * my + 1e-4) * (2 * cxy + 9e-4) / ((mx**2 + my**2 + 1e-4) * (vx + vy + 9e-4)))
    return float(np.mean(values))


def test_ssim_matches_the_formula_written_out():
    a, b = noise(13, 14, 1), noise(13, 14, 2)
    assert ssim(a, b) == pytest.approx(_ssim_by_loops(a, b), abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, b) == pytest.approx(ssim(b, a))
    assert ssim(a, b) < 0.2  # independent noise is dissimilar


def test_ssim_of_constant_images_is_the_luminance_term():
    a = np.full((16, 16, 3), 51, np.uint8)  # 0.2
    b = np.full((16, 16, 3), 153, np.uint8)  # 0.6: no variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)
    assert ssim(a, b) == pytest.approx((2 * 0.2 * 0.6 + 1e-4) / (0.04 + 0.36 + 1e-4))


def test_ssim_outside_the_mask_ignores_the_edit():
    a = noise(24, 24, 3)
    b = a.copy()
    edit = np.zeros((24, 24), bool)
    edit[5:15, 8:20] = True
    b[edit] = 255 - b[edit]
    assert ssim(a, b, keep=~edit) == pytest.approx(1.0)
    assert ssim(a, b) < 0.9
    with pytest.raises(ValueError, match="at least 11"):
        ssim(a[:8], b[:8])


# ---------------------------------------------------------------- LPIPS


def test_lpips_formula_on_a_hand_computed_stack():
    # one layer, 2 channels, 2 positions: position 0 holds (3, 4) vs (4, 3), unit-normalised (0.6, 0.8) vs (0.8, 0.6),
    # squared difference (0.04, 0.04), weighted by (1, 2): 0.12; position 1 is equal in both: 0. Mean over positions.
    f0 = torch.tensor([[3.0, 1.0], [4.0, 1.0]]).view(1, 2, 1, 2)
    f1 = torch.tensor([[4.0, 2.0], [3.0, 2.0]]).view(1, 2, 1, 2)  # (1, 1) and (2, 2) normalise alike
    w = torch.tensor([1.0, 2.0])
    assert float(lpips_from_features([f0], [f1], [w])[0]) == pytest.approx(0.06)
    # a second layer adds its own term: one channel, scaled copies normalise to the same unit vector -> 0
    g0, g1 = torch.full((1, 1, 3, 3), 2.0), torch.full((1, 1, 3, 3), 5.0)
    assert float(lpips_from_features([f0, g0], [f1, g1], [w, torch.ones(1)])[0]) == pytest.approx(0.06)
    with pytest.raises(ValueError):
        lpips_from_features([f0, g0], [f1], [w])


def test_the_backbones_have_torchvisions_parameter_counts_and_tap_widths():
    # torchvision's features: alexnet 2,469,696; vgg16 14,714,688; squeezenet1_1 1,235,496 minus its 513,000 classifier
    counts = {"alex": 2_469_696, "vgg": 14_714_688, "squeeze": 722_496}
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    for net, count in counts.items():
        model = LPIPS(net)
        assert sum(p.numel() for p in model.features.parameters()) == count
        assert [f.shape[1] for f in model.tapped(x)] == list(LPIPS_NETS[net][3])
    keys = LPIPS("squeeze").features.state_dict()
    assert keys["3.squeeze.weight"].shape == (16, 64, 1, 1) and keys["12.expand3x3.weight"].shape == (256, 64, 3, 3)
    assert LPIPS("alex").features.state_dict()["10.weight"].shape == (256, 256, 3, 3)


def test_load_lpips_reads_torchvision_and_lpips_files(tmp_path):
    saved = save_random_lpips(tmp_path / "w", "squeeze")
    model = load_lpips(tmp_path / "w")
    assert model.net == "squeeze"
    for a, b in zip(model.state_dict().values(), saved.state_dict().values()):
        assert torch.equal(a, b)
    a, b = noise(64, 64, 1), noise(64, 64, 2)
    assert lpips_distance(model, a, a) == pytest.approx(0.0, abs=1e-7)
    d = lpips_distance(model, a, b)
    assert d > 0 and d == pytest.approx(lpips_distance(model, b, a), rel=1e-5)
    edit = np.zeros((64, 64), bool)
    edit[10:30, 10:30] = True
    c = a.copy()
    c[edit] = b[edit]
    assert lpips_distance(model, a, c, keep=~edit) == pytest.approx(0.0, abs=1e-7)  # differs inside the edit only
    assert lpips_distance(model, a, c) > 0


def test_load_lpips_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_lpips(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="squeeze.pth, alex.pth or vgg.pth"):
        load_lpips(tmp_path / "empty")
    save_random_lpips(tmp_path / "w", "squeeze")
    (tmp_path / "w" / "squeezenet1_1-0000.pth").unlink()
    with pytest.raises(FileNotFoundError, match="squeezenet1_1"):
        load_lpips(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="alex.pth"):
        load_lpips(tmp_path / "w", "alex")
    torch.save({"lin0.model.1.weight": torch.ones(1, 5, 1, 1)}, tmp_path / "w" / "squeeze.pth")
    save_random_lpips(tmp_path / "v", "squeeze")
    (tmp_path / "v" / "squeeze.pth").write_bytes((tmp_path / "w" / "squeeze.pth").read_bytes())
    with pytest.raises(ValueError, match="lin0"):
        load_lpips(tmp_path / "v")


def test_ns_lpips_weights_the_non_selected_region(tmp_path):
    model = save_random_lpips(tmp_path / "w", "alex")
    a, b = noise(64, 64, 4), noise(64, 64, 5)
    edit = np.zeros((64, 64), np.float32)
    edit[16:48, 16:48] = 1.0
    c = a.copy()
    c[edit > 0] = b[edit > 0]
    assert ns_lpips(model, a, c, edit, size=64) == pytest.approx(0.0, abs=1e-7)  # the change is all selected
    assert ns_lpips(model, a, c, np.zeros((64, 64), np.float32), size=64) > 0
    # nothing selected: plain LPIPS of the [0, 1] images, fed to the network as they are (StyleDiffusion's script)
    x0, x1 = (torch.from_numpy(im / 255.0).float().permute(2, 0, 1)[None] for im in (a, c))
    expected = float(model(x0, x1)[0])
    assert ns_lpips(model, a, c, np.zeros((64, 64), np.float32), size=64) == pytest.approx(expected, rel=1e-5)
    assert ns_lpips(model, a, c, edit, size=32) >= 0  # resized to StyleDiffusion's 256 by default, any size works
    with pytest.raises(ValueError, match="selected"):
        ns_lpips(model, a, c, edit * 2)


# ---------------------------------------------------------------- CLIP and structure distance


def test_clip_score_is_100_times_the_clipped_cosine(tmp_path):
    scorer = ClipScorer(save_tiny_clip(tmp_path / "clip"))
    image = noise(48, 40, 6)
    score = scorer(image, "a red circle")
    inputs = scorer.processor(text=["a red circle"], images=[image], return_tensors="pt", padding=True)
    out = scorer.model(**inputs)
    cosine = float(torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds)[0])
    assert score == pytest.approx(max(100 * cosine, 0.0), abs=1e-4)
    assert 0.0 <= score <= 100.0
    assert scorer(image, "a red circle", keep=np.ones((48, 40), bool)) == pytest.approx(score)
    black = scorer(np.zeros_like(image), "a red circle")
    assert scorer(image, "a red circle", keep=np.zeros((48, 40), bool)) == pytest.approx(black)
    scores = {scorer(image, t) for t in ("a red circle", "a blue square", "the photo of a bowl")}
    assert len(scores) > 1 or scores == {0.0}  # the text matters (or every cosine is clipped at 0)


def test_clip_and_dino_folders_must_exist(tmp_path):
    with pytest.raises(FileNotFoundError, match="clip-vit-large-patch14"):
        ClipScorer(tmp_path)
    with pytest.raises(FileNotFoundError, match="dino-vitb8"):
        StructureDistance(tmp_path)


def test_key_self_similarity_by_hand():
    keys = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    r = 1 / math.sqrt(2)
    expected = torch.tensor([[1.0, 0.0, r], [0.0, 1.0, r], [r, r, 1.0]])
    assert torch.allclose(key_self_similarity(keys), expected)


def test_structure_distance_of_a_dino_shaped_vit(tmp_path):
    metric = StructureDistance(save_tiny_dino(tmp_path / "dino"), size=32)
    a, b = noise(64, 64, 7), noise(64, 64, 8)
    assert metric.keys(a).shape == (1 + 4 * 4, 32)  # the class token and 4 x 4 patches of 8 px at 32 px
    assert metric.keys(noise(64, 96, 9)).shape == (1 + 4 * 6, 32)  # shorter side to 32, positions interpolated
    assert metric(a, a) == pytest.approx(0.0, abs=1e-10)
    assert metric(a, b) > 0 and metric(a, b) == pytest.approx(metric(b, a))

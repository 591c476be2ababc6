"""RELAX (Wickstrøm et al. 2021): localisation, exact equations, determinism, shift, real timm model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_modules.components.relax import RELAX

SIZE = 32
REGION_A = (slice(4, 12), slice(20, 28))  # rows, cols of the 8x8 patch each embedding looks at
REGION_B = (slice(22, 30), slice(3, 11))


def patch_embed(region):
    """Embedding of the mean p of one 8x8 patch only: (cos 2p, sin 2p, p^2, 1/2), so cos(h, h_n) drops
    when the patch is masked and does not depend on any other pixel."""
    def embed(x: torch.Tensor) -> torch.Tensor:
        p = x[:, :, region[0], region[1]].mean(dim=(1, 2, 3))
        return torch.stack([torch.cos(2 * p), torch.sin(2 * p), p ** 2, torch.full_like(p, 0.5)], 1)
    return embed


def region_mask(region) -> torch.Tensor:
    inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    inside[region] = True
    return inside


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return 0.5 + torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


def reference(relax: RELAX, embed, images: torch.Tensor):
    """Direct numpy RELAX: masks from the same generator path, masked images built here, two-pass
    weighted mean and variance (paper eq. 4 and U-RELAX)."""
    m = relax.masks(relax.num_masks, SIZE, SIZE).numpy().astype(np.float64)  # [N, H, W], 1 = keep
    out_r, out_u = [], []
    for x in images:
        masked = x.numpy()[None] * m[:, None] + relax.fill_value * (1 - m[:, None])
        h = embed(x[None]).double().numpy()[0]
        hn = embed(torch.from_numpy(masked).float()).double().numpy()
        s = hn @ h / (np.linalg.norm(hn, axis=1) * np.linalg.norm(h))
        r = np.einsum("n,nij->ij", s, m) / m.sum(0)
        u = np.einsum("nij,nij->ij", m, (s[:, None, None] - r) ** 2) / m.sum(0)
        out_r.append(r)
        out_u.append(u)
    return np.stack(out_r), np.stack(out_u)


def localises(importance: torch.Tensor, region) -> bool:
    """Mean importance inside the patch clearly above outside, and most of the top-64 pixels inside."""
    inside = region_mask(region)
    top = importance.flatten().topk(int(inside.sum())).indices
    return bool(importance[inside].mean() > importance[~inside].mean() + 0.02
                and inside.flatten()[top].float().mean() >= 0.75)


def test_importance_concentrates_in_the_embedded_region(images):
    relax = RELAX(num_masks=1000, mask_batch_size=100)
    for region, other in ((REGION_A, REGION_B), (REGION_B, REGION_A)):
        importance = relax.explain(patch_embed(region), images).importance
        assert importance.shape == (2, SIZE, SIZE)
        for imp in importance:
            assert localises(imp, region) and not localises(imp, other)


def test_swapped_mask_convention_would_fail_localisation(images):
    # The bug "masking keeps instead of removes" feeds embed x * (1 - M) (fill 0) while weighting by M.
    # Simulate it by complementing every masked copy the explainer passes: the importance then peaks
    # outside the patch, so the localisation assertion above discriminates this bug.
    x = images[:1]
    embed = patch_embed(REGION_A)

    def swapped(z: torch.Tensor) -> torch.Tensor:
        return embed(z if torch.equal(z, x) else x - z)

    imp = RELAX(num_masks=1000).explain(swapped, x).importance[0]
    inside = region_mask(REGION_A)
    assert imp[inside].mean() < imp[~inside].mean() and not localises(imp, REGION_A)


def test_weighted_mean_not_divided_by_num_masks():
    # Image == fill_value: every masked copy equals the image, s_n = 1, so R = sum M / sum M = 1 and U = 0
    # everywhere. Dividing by num_masks instead would give sum_n M_ij / N ~ keep_prob = 0.3 here.
    x = torch.full((1, 3, SIZE, SIZE), 0.7)
    res = RELAX(num_masks=64, keep_prob=0.3, fill_value=0.7).explain(patch_embed(REGION_A), x)
    torch.testing.assert_close(res.importance, torch.ones(1, SIZE, SIZE), atol=1e-6, rtol=0)
    torch.testing.assert_close(res.uncertainty, torch.zeros(1, SIZE, SIZE), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fill_value, max_shift", [(0.0, 0), (0.25, 0), (0.0, 6)])
def test_equals_direct_numpy_computation(images, fill_value, max_shift):
    relax = RELAX(num_masks=150, mask_batch_size=40, fill_value=fill_value, max_shift=max_shift, seed=3)
    embed = patch_embed(REGION_A)
    res = relax.explain(embed, images)
    r, u = reference(relax, embed, images)
    np.testing.assert_allclose(res.importance.numpy(), r, atol=1e-6)
    np.testing.assert_allclose(res.uncertainty.numpy(), u, atol=1e-6)
    assert (res.uncertainty >= 0).all() and u.max() > 1e-4  # a non-trivial variance was checked


def test_fill_value_reaches_embed():
    seen = []

    def embed(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.clone())
        return x.flatten(1)

    x = torch.full((1, 1, 16, 16), 2.0)
    RELAX(num_masks=20, mask_batch_size=20, fill_value=-1.0).explain(embed, x)
    masked = seen[1]  # seen[0] is the unmasked image
    assert masked.shape == (20, 1, 16, 16)
    assert masked.min() == pytest.approx(-1.0, abs=1e-6) and masked.max() == pytest.approx(2.0, abs=1e-6)


def test_masks_are_bilinear_upsampling_with_reflect_pad_and_crop_shift():
    # Independent path: F.interpolate(bilinear, align_corners=False) of the drawn grids, numpy reflect pad
    # by 3 on each side, crop at the drawn offsets (dy, dx) in {0..6} (the reference code for 7 cells).
    relax = RELAX(grid_size=7, max_shift=6)
    grids, shifts = relax.draw(16, torch.Generator().manual_seed(0))
    assert shifts.min() >= 0 and shifts.max() <= 6 and len(shifts.unique()) > 1
    base = F.interpolate(grids[:, None], size=(20, 24), mode="bilinear", align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(RELAX(grid_size=7).upsample(grids, 0 * shifts, 20, 24).numpy(), base,
                               atol=1e-6)
    padded = np.pad(base, ((0, 0), (3, 3), (3, 3)), mode="reflect")
    shifted = relax.upsample(grids, shifts, 20, 24).numpy()
    for k, (dy, dx) in enumerate(shifts.tolist()):
        np.testing.assert_allclose(shifted[k], padded[k, dy:dy + 20, dx:dx + 24], atol=1e-6)
    assert -1e-6 <= shifted.min() and shifted.max() <= 1 + 1e-6
    torch.testing.assert_close(relax.masks(16, 20, 24), relax.upsample(grids, shifts, 20, 24))


def conv_embed() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def test_deterministic_and_independent_of_mask_batch_size(images):
    net, images = conv_embed(), images[:1]
    runs = [RELAX(num_masks=200, mask_batch_size=bs, seed=5).explain(net, images) for bs in (7, 50, 100)]
    again = RELAX(num_masks=200, mask_batch_size=7, seed=5).explain(net, images)
    assert torch.equal(runs[0].importance, again.importance)
    assert torch.equal(runs[0].uncertainty, again.uncertainty)
    for res in runs[1:]:
        torch.testing.assert_close(res.importance, runs[0].importance, atol=1e-6, rtol=0)
        torch.testing.assert_close(res.uncertainty, runs[0].uncertainty, atol=1e-6, rtol=0)
    other = RELAX(num_masks=200, mask_batch_size=50, seed=6).explain(net, images)
    assert (other.importance - runs[0].importance).abs().max() > 1e-4


def test_unbatched_input_and_batch_independence(images):
    relax = RELAX(num_masks=60, mask_batch_size=25)
    net = conv_embed()
    single = relax.explain(net, images[1])
    assert single.importance.shape == single.uncertainty.shape == (SIZE, SIZE)
    torch.testing.assert_close(single.importance, relax.explain(net, images).importance[1],
                               atol=1e-6, rtol=0)


def test_real_timm_resnet18():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    x = torch.rand(1, 3, 32, 32)
    res = RELAX(num_masks=50, mask_batch_size=25).explain(model, x)
    assert res.importance.shape == (1, 32, 32) and torch.isfinite(res.importance).all()
    assert (res.uncertainty >= 0).all() and res.importance.std() > 0


def test_warns_for_module_in_train_mode():
    net = conv_embed().train()
    with pytest.warns(UserWarning, match="train mode"):
        RELAX(num_masks=2).explain(net.forward, torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_masks=0), "num_masks"), (dict(mask_batch_size=0), "mask_batch_size"),
    (dict(grid_size=0), "grid_size"), (dict(keep_prob=0.0), "keep_prob"), (dict(keep_prob=1.0), "keep_prob"),
    (dict(max_shift=-1), "max_shift"), (dict(fill_value=float("nan")), "fill_value"),
    (dict(num_masks=2.5), "num_masks")])
def test_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RELAX(**kwargs)


def test_validation_of_inputs():
    relax = RELAX(num_masks=2)
    with pytest.raises(ValueError, match="images"):
        relax.explain(lambda x: x.flatten(1), torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="max_shift"):
        RELAX(num_masks=2, max_shift=10).explain(lambda x: x.flatten(1), torch.ones(1, 1, 4, 4))

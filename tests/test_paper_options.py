"""Paper / reference-code options: small ResNet stem, LARS eta and warm-up, lr 0 kept, VAE cosine, crop_mm."""
import numpy as np
import pytest
import torch

from datamodules.deeplesion import lesion_crop
from lightning_modules.components.gem_encoder import GeMEncoder
from lightning_modules.components.optim import optimizer_with_schedule
from lightning_modules.simclr_gem import SimCLRGeM
from lightning_modules.simsiam import SimSiam
from lightning_modules.vae import VAE


def test_small_stem_gives_gem_a_4x4_map_at_64_px():
    x = torch.zeros(1, 3, 64, 64)
    assert GeMEncoder("resnet18", extra_channels=(), small_stem=False).backbone(x).shape[-2:] == (2, 2)
    assert GeMEncoder("resnet18", extra_channels=(), small_stem=True).backbone(x).shape[-2:] == (4, 4)


def test_lars_trust_coefficient_and_warmup_reach_the_optimiser():
    model = SimCLRGeM(extra_channels=(8,), optimizer="lars", trust_coefficient=0.01, warmup_epochs=2,
                      lr_schedule="cosine")
    model.trainer = type("T", (), {"max_epochs": 10})()  # only max_epochs is read
    h = model.hparams
    out = optimizer_with_schedule(model, h.optimizer, h.lr, h.momentum, h.weight_decay, h.lr_schedule,
                                  h.trust_coefficient, h.warmup_epochs)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    assert opt.param_groups[0]["trust_coefficient"] == 0.01
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.025, 0.05, 0.05]) and lrs[3] < 0.05      # warm-up, then cosine


def test_simsiam_lr_zero_is_not_replaced_by_the_scaling_rule():
    assert SimSiam(backbone="resnet18", proj_hidden_dim=8, proj_dim=8, pred_hidden_dim=4,
                   lr=0.0).configure_optimizers().param_groups[0]["lr"] == 0.0


def test_vae_can_rank_by_cosine_as_the_lesion_paper():
    assert VAE(image_size=32, channels=(8, 16), distance="cosine").search_space == "cosine"
    with pytest.raises(ValueError, match="model.distance"):
        VAE(image_size=32, channels=(8, 16), distance="hamming")


def test_crop_window_in_source_pixels_is_resized_to_the_input_size():
    hu = np.tile(np.arange(128, dtype=np.float32), (128, 1))     # HU = column index
    crop = lesion_crop(hu, (60, 60, 63, 63), crop_size=32, window=16)    # 16 source pixels -> 32 input pixels
    assert crop.shape == (32, 32)
    assert 53 <= crop.min() < crop.max() <= 70                  # only the 16-pixel neighbourhood of the box

"""SimCLR-GeM (Qi et al. 2023): encoder, NT-Xent, LARS, views, and the stage-2 margin fine-tuning."""
import inspect

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from lightly.utils.lars import LARS
from torch.utils.data import DataLoader

from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.views import ContrastiveViewsd
from lightning_modules.simclr_gem import SimCLRGeM
from lightning_modules.simclr_gem_finetune import SimCLRGeMFinetune

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = dict(backbone="resnet10t", extra_channels=(16, 16))  # paper: resnet18, (512, 512); tests stay fast


def tiny_simclr(**kw):
    return SimCLRGeM(proj_hidden_dim=16, proj_dim=8, **TINY, **kw)


def tiny_finetune(stage1_checkpoint=None, **kw):
    return SimCLRGeMFinetune(stage1_checkpoint=stage1_checkpoint, **TINY, **kw)


def nt_xent(z0, z1, t):
    """SimCLR eq. 1 written out: mean over the 2N anchors of -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)."""
    z = F.normalize(torch.cat([z0, z1]), dim=1)
    n = len(z0)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        sims = torch.stack([z[i] @ z[k] for k in range(2 * n) if k != i]) / t
        total = total - (z[i] @ z[j] / t - torch.logsumexp(sims, 0))
    return total / (2 * n)


@pytest.fixture(scope="module")
def stage1_checkpoint(tmp_path_factory):
    """A SimCLRGeM checkpoint after one LARS + cosine step in a Trainer, GeM p moved off its init."""
    torch.manual_seed(0)
    model = tiny_simclr()
    batches = [{"views": [torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)], "image": torch.rand(4, 3, 32, 32)}]
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    before = next(model.encoder.backbone.parameters()).detach().clone()
    trainer.fit(model, DataLoader(batches, batch_size=None))
    assert isinstance(trainer.optimizers[0], LARS)
    assert not torch.equal(before, next(model.encoder.backbone.parameters()))  # LARS stepped
    with torch.no_grad():
        model.encoder.pool.p.fill_(2.5)
    path = tmp_path_factory.mktemp("stage1") / "simclr_gem.ckpt"
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in model.encoder.state_dict().items()}


def test_nt_xent_matches_simclr_equation():
    torch.manual_seed(0)
    model = tiny_simclr()
    z0, z1 = torch.randn(5, 8), torch.randn(5, 8)
    assert model.criterion.temperature == 0.1
    assert torch.allclose(model.criterion(z0, z1), nt_xent(z0, z1, 0.1), atol=1e-5)


def test_embedding_is_unit_norm_gem_descriptor():
    model = tiny_simclr().eval()
    emb = model.embed(torch.rand(3, 3, 32, 32))
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model.search_space == "cosine" and model.encoder.pool.p.item() == 3.0
    convs = [m for m in model.encoder.extra.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels) for c in convs] == [((3, 3), 16), ((3, 3), 16)]
    defaults = {k: v.default for k, v in inspect.signature(SimCLRGeM).parameters.items()}
    assert (defaults["backbone"], defaults["extra_channels"], defaults["gem_p"]) == ("resnet18", (512, 512), 3.0)
    assert (defaults["temperature"], defaults["lr"], defaults["weight_decay"]) == (0.1, 0.05, 1e-5)


def test_training_step_gives_finite_loss_with_graph():
    model = tiny_simclr().train()
    loss = model.training_step({"views": [torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)]}, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert model.encoder.pool.p.grad is not None and next(model.encoder.backbone.parameters()).grad.abs().sum() > 0


def test_lars_groups_exclude_biases_norms_and_gem_p():
    model = tiny_simclr(lr_schedule="constant")
    opt = model.configure_optimizers()
    assert isinstance(opt, LARS) and opt.defaults["lr"] == 0.05
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 1e-5 and plain["weight_decay"] == 0.0
    assert any(p is model.encoder.pool.p for p in plain["params"])
    assert all(p.ndim > 1 for p in decayed["params"])
    assert isinstance(tiny_simclr(optimizer="sgd", lr_schedule="constant").configure_optimizers(), torch.optim.SGD)


def test_unknown_optimizer_names_the_key():
    with pytest.raises(ValueError, match="model.optimizer='adamw'"):
        tiny_simclr(optimizer="adamw")
    with pytest.raises(ValueError, match="model.optimizer"):
        tiny_finetune(optimizer="lamb")


def test_views_with_blur_and_hu_windows():
    sample = {"image": torch.rand(3, 64, 64), "hu": torch.linspace(-1000, 1000, 64 * 64).reshape(1, 64, 64)}
    views = tiny_simclr().view_transform()(sample)["views"]
    assert len(views) == 2 and all(v.shape == (3, 64, 64) for v in views)
    hu_views = tiny_simclr(hu_windows=[(-160, 240), (-1000, 400)]).view_transform()(sample)["views"]
    assert len(hu_views) == 2 and all(0 <= v.min() and v.max() <= 1 for v in hu_views)
    with pytest.raises(ValueError, match="model.hu_windows"):
        tiny_simclr(hu_windows=[(-160, 240)])


def test_blur_is_off_by_default_and_smooths_when_on():
    still = dict(crop_scale=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0)
    image = torch.rand(3, 64, 64)
    assert torch.allclose(ContrastiveViewsd(**still)({"image": image})["views"][0], image, atol=1e-6)
    blurred = ContrastiveViewsd(**still, blur_p=1.0)({"image": image})["views"][0]
    tv = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert tv(blurred) < 0.9 * tv(image)
    steps = ContrastiveViewsd(**still, blur_p=0.5).augmentation((64, 64)).transforms
    assert steps[-1].transforms[0].kernel_size == (7, 7)  # ~10% of the side, odd


def test_create_backbone_feature_map_option():
    assert create_backbone("resnet18")(torch.rand(1, 3, 64, 64)).shape == (1, 512)
    assert create_backbone("resnet18", pooled=False)(torch.rand(1, 3, 64, 64)).shape == (1, 512, 2, 2)


def test_stage2_loads_stage1_encoder_exactly(stage1_checkpoint):
    path, encoder_state = stage1_checkpoint
    model = tiny_finetune(str(path))
    for key, value in model.encoder.state_dict().items():
        assert torch.equal(value, encoder_state[key]), key
    assert model.encoder.pool.p.item() == 2.5 and model.search_space == "cosine"


def test_stage2_checkpoint_errors_name_the_key(stage1_checkpoint, tmp_path):
    with pytest.raises(FileNotFoundError, match="model.init_args.stage1_checkpoint"):
        tiny_finetune(str(tmp_path / "missing.ckpt"))
    with pytest.raises(ValueError, match="model.init_args.stage1_checkpoint.*extra_channels"):
        SimCLRGeMFinetune(stage1_checkpoint=str(stage1_checkpoint[0]), backbone="resnet10t", extra_channels=(8, 8))
    with pytest.warns(UserWarning, match="stage1_checkpoint is None"):
        tiny_finetune()


def test_stage2_trains_on_labelled_rows_only():
    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        model = tiny_finetune()
    images, labels = torch.rand(7, 3, 32, 32), torch.tensor([0, 0, 1, -1, 1, 2, -1])
    loss = model.training_step({"views": [images], "image": images, "label": labels}, 0)
    assert torch.isfinite(loss) and loss.requires_grad and loss > 0
    model.eval()  # no BatchNorm batch statistics: the unlabelled rows then cannot matter
    keep = labels >= 0
    expected = model.criterion(model.embed(images[keep]), labels[keep])
    assert torch.allclose(model.margin_loss(images, labels), expected, atol=1e-6)


def test_stage2_batch_without_triplet_gives_zero_loss_with_graph():
    with pytest.warns(UserWarning):
        model = tiny_finetune(augment=False)
    assert model.view_transform() is None
    loss = model.training_step({"image": torch.rand(4, 3, 32, 32), "label": torch.tensor([0, 1, -1, -1])}, 0)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_stage2_single_augmented_view_and_sgd():
    with pytest.warns(UserWarning):
        model = tiny_finetune()
    views = model.view_transform()({"image": torch.rand(3, 32, 32)})["views"]
    assert len(views) == 1 and views[0].shape == (3, 32, 32)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.9

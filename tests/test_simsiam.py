"""SimSiam-HU: loss against the paper's equation, stop-gradient, HU views, backbones."""
import pytest
import torch
import torch.nn.functional as F

from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.views import ContrastiveViewsd
from lightning_modules.simsiam import SimSiam


def tiny_simsiam(**kw):
    return SimSiam(backbone="resnet18", proj_hidden_dim=32, proj_dim=32, pred_hidden_dim=8, **kw)


def test_loss_matches_simsiam_equation():
    torch.manual_seed(0)
    model = tiny_simsiam().train()
    x1, x2 = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    torch.manual_seed(1)
    loss, _ = model.simsiam_loss([x1, x2])
    torch.manual_seed(1)
    z1, p1 = model(x1)
    z2, p2 = model(x2)
    # L = 1/2 D(p1, z2) + 1/2 D(p2, z1), D = -cos (SimSiam eq. 1-2)
    expected = -0.5 * (F.cosine_similarity(p1, z2).mean() + F.cosine_similarity(p2, z1).mean())
    assert torch.allclose(loss, expected, atol=1e-6)


def test_stop_gradient_on_targets():
    """The targets z of D(p, stopgrad(z)) carry no gradient; the predictions p do."""
    model = tiny_simsiam().train()
    calls = []
    model.criterion.register_forward_pre_hook(
        lambda module, args: calls.append((args[0].requires_grad, args[1].requires_grad)))
    loss, _ = model.simsiam_loss([torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)])
    assert calls == [(True, False), (True, False)]
    loss.backward()
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_heads_follow_paper_structure():
    model = SimSiam(backbone="resnet18")
    proj = [m for m in model.projector.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(proj) == 3 and proj[-1].affine is False  # BN without affine at the end of g
    lin = [m for m in model.predictor.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(2048, 512), (512, 2048)]
    assert model.embed(torch.rand(2, 3, 32, 32)).shape == (2, 512)  # resnet18 pooled features


@pytest.mark.parametrize("scaling, narrow_range", [("paper", (0.0, 1.0)), ("reference", (0.5, 0.7))])
def test_hu_views_window_scaling(scaling, narrow_range):
    hu = torch.linspace(-1000, 1500, 64 * 64).reshape(1, 64, 64)
    views = ContrastiveViewsd(windows=[(-200, 300), (50, 150)], window_scaling=scaling, jitter_p=0.0,
                              grayscale_p=0.0, crop_scale=(1.0, 1.0), flip_p=0.0)({"hu": hu})["views"]
    assert len(views) == 2 and views[0].shape == (3, 64, 64)
    assert views[0].min() == 0.0 and views[0].max() == 1.0
    lo, hi = narrow_range
    assert views[1].min() == pytest.approx(lo, abs=1e-3) and views[1].max() == pytest.approx(hi, abs=1e-3)


def test_views_need_hu_key():
    with pytest.raises(KeyError, match="'hu'"):
        ContrastiveViewsd(windows=[(-200, 300)])({"image": torch.rand(3, 8, 8)})


def test_bad_window_rejected():
    with pytest.raises(ValueError, match="low < high"):
        ContrastiveViewsd(windows=[(300, -200)])


def test_unknown_backbone_names_the_key():
    with pytest.raises(ValueError, match="model.backbone='resnet5O'.*resnet50"):
        create_backbone("resnet5O")


def test_pretrained_weights_from_local_file(tmp_path):
    src = create_backbone("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(src.state_dict(), path)
    loaded = create_backbone("resnet18", pretrained=str(path))
    for (k, a), b in zip(src.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(FileNotFoundError, match="model.pretrained"):
        create_backbone("resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_lr_follows_linear_scaling_rule():
    model = tiny_simsiam()
    opt = model.configure_optimizers()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 32 / 256)

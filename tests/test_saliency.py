"""Deep Taylor / LRP saliency (zennit): conservation, determinism, class dependence, the step-2 cache."""
import pytest
import torch
from torch import nn

from lightning_modules.components.saliency import (
    DenseNetClassifier,
    composite,
    normalise,
    relevance,
    saliency_image,
)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return DenseNetClassifier("densenet_tiny").eval()


def test_textbook_deep_taylor_conserves_relevance_on_a_densenet(tiny_net, one_thread):
    """z+ / z^B rules, BatchNorm and ReLU pass, z-rule pooling: sum of input relevance = output relevance."""
    x = normalise(torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    rel = relevance(tiny_net, x, "deep_taylor", "logit")
    logits = tiny_net(x).squeeze(1).detach()
    assert torch.allclose(rel.sum((1, 2, 3)), logits, rtol=1e-3, atol=1e-5)
    prob = relevance(tiny_net, x, "deep_taylor", "probability")
    assert torch.allclose(prob.sum((1, 2, 3)), torch.sigmoid(logits), rtol=1e-3, atol=1e-5)


def test_reference_rules_conserve_relevance_without_relu():
    """The w^2 rule (and BatchNorm pass-through) redistribute exactly; iNNvestigate's gradient at ReLUs
    drops the relevance of inactive units, so the reference map is only conservative between ReLUs."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(2, 1)).eval()
    with torch.no_grad():
        net[-1].weight.abs_()      # z+ at the output layer needs positive contributions
        net[1].running_var.fill_(2.0)
    x = torch.rand(2, 3, 12, 12) + 0.1
    inputs = x.clone().requires_grad_(True)
    with composite("reference").context(net) as modified:
        out = modified(inputs)
        (rel,) = torch.autograd.grad(out, inputs, grad_outputs=out.detach())
    # AdaptiveAvgPool gets the gradient (a uniform split): conservative too.
    assert torch.allclose(rel.sum((1, 2, 3)), out.detach().squeeze(1), rtol=1e-4)


@pytest.mark.parametrize("rule_map", ["reference", "deep_taylor"])
def test_maps_are_deterministic_and_depend_on_the_image(tiny_net, rule_map, one_thread):
    from datamodules.synthetic.chexpert import draw_radiograph

    anatomy = {"body": 0.95, "heart": 1.0, "rib_phase": 0.3, "shift": 0.0, "contrast": 1.0, "brightness": 0.0}
    images = []
    for effusion in (1.0, 0.0):
        img = draw_radiograph({"Pleural Effusion": effusion}, anatomy, False, (32, 32),
                              __import__("numpy").random.default_rng(0))
        images.append(torch.tensor(img, dtype=torch.float32).expand(3, -1, -1))
    x = normalise(torch.stack(images))
    a = saliency_image(relevance(tiny_net, x, rule_map))
    b = saliency_image(relevance(tiny_net, x, rule_map))
    assert torch.equal(a, b)
    assert a.abs().amax(dim=(1, 2, 3)).allclose(torch.ones(2))              # divided by max |R|
    assert (a[0] - a[1]).abs().max() > 0.05                                 # positive vs negative differ


def test_step2_saliency_cache_is_used_and_exact(one_thread):
    from lightning_modules.ig_cbir import IGCBIR

    torch.manual_seed(0)
    model = IGCBIR("densenet_tiny", classifier_epochs=0)
    model.start_step2()
    x = torch.rand(4, 3, 32, 32)
    first = model.saliency_map(x)
    assert len(model._cache) == 4
    calls = []
    import lightning_modules.ig_cbir as mod
    original = mod.relevance
    mod.relevance = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        again = model.saliency_map(x[[2, 0]])
    finally:
        mod.relevance = original
    assert not calls and torch.allclose(again, first[[2, 0]], atol=1e-3)    # float16 cache

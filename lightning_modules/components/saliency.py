"""Deep Taylor / LRP saliency of a DenseNet classifier with zennit (Montavon et al. 2017; Silva et al. 2020).

IG-CBIR explains its step-1 classifier with iNNvestigate's ``deep_taylor`` analyzer on a Keras DenseNet-121.
Two zennit rule maps are offered:

``reference`` (iNNvestigate's behaviour on Keras DenseNet, whose convolutions carry no fused activation):
    convolutions w^2 rule (bias ignored); BatchNorm pass-through (iNNvestigate fuses it as a diagonal linear
    layer with the w^2 rule, which passes each channel's relevance unchanged); the dense output layer (fused
    sigmoid) z+ rule, bias ignored; ReLU, pooling and concatenation: the plain gradient of relevance.
``deep_taylor`` (the textbook Deep Taylor decomposition for ReLU nets, Montavon et al. 2017):
    z+ rule (bias ignored) on every convolution and linear layer, z^B (box) rule on the first convolution
    with the bounds of the normalised input, BatchNorm and ReLU pass-through, average pooling by the z rule,
    max pooling by its gradient (winner takes all). Relevance is conserved layer by layer (up to the
    stabiliser and neurons whose inputs are all zero).

torchvision's ``densenet121`` keeps BatchNorm and ReLU as separate modules (timm's fuses them), and
:class:`DenseNetClassifier` makes the final ReLU and pooling modules too, so every step gets its rule.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import DenseNet
from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
from zennit.rules import Norm, Pass, WSquare, ZBox, ZPlus
from zennit.types import AvgPool, BatchNorm, Convolution

#: "torch" preprocessing of Keras applications: x / 255, then ImageNet mean / std.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RULE_MAPS = ("reference", "deep_taylor")
OUTPUT_RELEVANCE = ("probability", "logit")
#: DenseNet configurations by name: torchvision's densenet121 and a tiny one for tests.
ARCHITECTURES = {
    "densenet121": dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4),
    "densenet_tiny": dict(growth_rate=8, block_config=(2, 2), num_init_features=16, bn_size=2),
}


class DenseNetClassifier(nn.Module):
    """torchvision DenseNet features -> ReLU -> global average pool -> ``num_outputs`` logits.

    The same computation as ``torchvision.models.densenet121`` but with the final ReLU and pooling as
    modules (so LRP rules attach to them) and no in-place ReLU (zennit's hooks need the inputs kept).
    ``features(x)`` returns the pooled features [B, C] (1024 for DenseNet-121), the retrieval embedding.
    """

    def __init__(self, architecture: str = "densenet121", num_outputs: int = 1, pretrained: str | None = None):
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(f"architecture={architecture!r}: expected one of {', '.join(ARCHITECTURES)}")
        net = DenseNet(**ARCHITECTURES[architecture])
        if pretrained:
            load_densenet_weights(net, pretrained)
        for module in net.modules():
            if isinstance(module, nn.ReLU):
                module.inplace = False
        self.body = net.features
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(net.classifier.in_features, num_outputs)
        self.num_features = net.classifier.in_features

    def features(self, x: Tensor) -> Tensor:
        return self.pool(self.relu(self.body(x))).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def load_densenet_weights(net: DenseNet, path: str) -> None:
    """ImageNet weights from a local torchvision state-dict file (the classifier layer is not used)."""
    from pathlib import Path

    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained={path!r}: file not found (expected a torchvision densenet121 "
                                f"state dict, e.g. densenet121-a639ec97.pth; nothing is downloaded)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k.replace(".norm.1", ".norm1").replace(".conv.1", ".conv1").replace(".relu.1", ".relu1")
             .replace(".norm.2", ".norm2").replace(".conv.2", ".conv2").replace(".relu.2", ".relu2"): v
             for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier.")]
    if missing or unexpected:
        raise ValueError(f"pretrained={path!r} does not fit this DenseNet: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")


def normalise(images: Tensor) -> Tensor:
    """"torch" preprocessing of images in [0, 1] (already / 255): subtract ImageNet mean, divide by std."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def composite(rule_map: str) -> LayerMapComposite:
    """The zennit composite of a rule map (module docstring). ``deep_taylor`` bounds the first layer by the
    normalised images of [0, 1] inputs."""
    no_bias = ["bias"]
    if rule_map == "reference":
        return LayerMapComposite([(Convolution, WSquare(zero_params=no_bias)), (BatchNorm, Pass()),
                                  (nn.Linear, ZPlus(zero_params=no_bias))])
    if rule_map == "deep_taylor":
        low = normalise(torch.zeros(1, 3, 1, 1))
        high = normalise(torch.ones(1, 3, 1, 1))
        return SpecialFirstLayerMapComposite(
            [(nn.ReLU, Pass()), (BatchNorm, Pass()), (AvgPool, Norm()),
             (Convolution, ZPlus(zero_params=no_bias)), (nn.Linear, ZPlus(zero_params=no_bias))],
            [(Convolution, ZBox(low, high, zero_params=no_bias))])
    raise ValueError(f"rule_map={rule_map!r}: expected one of {', '.join(RULE_MAPS)}")


def relevance(model: nn.Module, inputs: Tensor, rule_map: str = "reference",
              output_relevance: str = "probability") -> Tensor:
    """Input relevance [B, C, H, W] of ``model``'s single output for ``inputs`` (already normalised).

    The output relevance is the sigmoid probability (iNNvestigate analyses the Keras model with its sigmoid
    output) or the logit; all rules are linear in it, so after :func:`saliency_image`'s max-|R| scaling the
    two differ only in sign where the logit is negative."""
    if output_relevance not in OUTPUT_RELEVANCE:
        raise ValueError(f"output_relevance={output_relevance!r}: expected one of {', '.join(OUTPUT_RELEVANCE)}")
    with torch.inference_mode(False), torch.enable_grad(), composite(rule_map).context(model) as modified:
        x = inputs.detach().clone().requires_grad_(True)  # a normal tensor even under Lightning's inference mode
        out = modified(x)
        if out.ndim != 2 or out.shape[1] != 1:
            raise ValueError(f"saliency needs a single-output model, got output shape {tuple(out.shape)}")
        init = torch.sigmoid(out) if output_relevance == "probability" else out
        (grad,) = torch.autograd.grad(out, x, grad_outputs=init.detach())
    return grad.detach()


def saliency_image(rel: Tensor) -> Tensor:
    """IG-CBIR's step-2 input from a relevance map: summed over channels, divided by its max |value| (per
    image), replicated to 3 channels; in [-1, 1] (the reference code's x 255 then / 255 cancel)."""
    heat = rel.sum(1, keepdim=True)
    peak = heat.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)
    return (heat / peak).expand(-1, 3, -1, -1).contiguous()


def gradient_x_input(model: nn.Module, inputs: Tensor) -> Tensor:
    """Gradient x input of the single logit (a cheap baseline for the saliency benchmark)."""
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).sum(), x)
    return (grad * x).detach()


def resize_map(heat: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of maps [B, C, h, w] to ``size`` (figures)."""
    return F.interpolate(heat, size=size, mode="bilinear", align_corners=False)

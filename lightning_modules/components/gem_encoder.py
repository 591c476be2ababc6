"""CNN encoder with extra convolutions, GeM pooling and L2 normalisation (Qi, Cheng & Haehn 2023)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.components.backbones import create_backbone
from lightning_modules.components.pooling import GeM


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (padding 1, no bias), batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class GeMEncoder(nn.Module):
    """Lesion-search encoder: timm CNN feature map -> extra 3x3 conv-BN-ReLU layers -> GeM -> L2 norm.

    The unit-norm output is the retrieval embedding (cosine search) of both training stages of Qi et al.
    2023 (SimCLR pre-training and margin-loss fine-tuning).

    Args:
        backbone: timm CNN name (paper: ``resnet18``).
        pretrained: local weights file for the backbone, or None (random init).
        extra_channels: output widths of the extra conv layers (paper: two layers; 512 each here).
        gem_p: initial GeM exponent (paper: 3, learnable).
        learn_gem_p: learn p (True in the paper).
        in_chans: input channels.
        small_stem: replace the ResNet stem's 7x7 stride-2 convolution by a 3x3 stride-1 one (the authors'
            code for 64 px crops): the last feature map is 4x4 instead of 2x2 at 64 px, so GeM pools 16
            positions, not 4. Needs a backbone with a ``conv1`` (timm ResNets).
    """

    def __init__(self, backbone: str = "resnet18", pretrained: Optional[str] = None,
                 extra_channels: Sequence[int] = (512, 512), gem_p: float = 3.0, learn_gem_p: bool = True,
                 in_chans: int = 3, small_stem: bool = False):
        super().__init__()
        self.backbone = create_backbone(backbone, pretrained, in_chans=in_chans, pooled=False)
        if small_stem:
            conv = getattr(self.backbone, "conv1", None)
            if not isinstance(conv, nn.Conv2d):
                raise ValueError(f"model.small_stem=true needs a ResNet-like backbone with a 'conv1' convolution; "
                                 f"model.backbone={backbone!r} has none")
            self.backbone.conv1 = nn.Conv2d(conv.in_channels, conv.out_channels, 3, stride=1, padding=1, bias=False)
        widths = [self.backbone.num_features, *map(int, extra_channels)]
        self.extra = nn.Sequential(*(conv_bn_relu(i, o) for i, o in zip(widths[:-1], widths[1:])))
        self.pool = GeM(gem_p, learn_p=learn_gem_p)
        self.num_features = widths[-1]

    def forward(self, images: Tensor) -> Tensor:
        """Unit-norm embeddings [B, num_features]."""
        features = self.backbone(images)
        if features.dim() != 4:
            raise ValueError(f"GeMEncoder needs a CNN feature map [B, C, h, w] from the backbone, got shape "
                             f"{tuple(features.shape)} (model.backbone must be a convolutional timm model)")
        return F.normalize(self.pool(self.extra(features)), dim=1)

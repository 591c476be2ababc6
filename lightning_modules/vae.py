"""Variational autoencoder baseline for lesion search (Kingma & Welling 2014; the VAE row of Qi, Cheng &
Haehn 2023). The retrieval embedding is the posterior mean mu (Euclidean search)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from lightning_modules.base import RetrievalModule

RECONSTRUCTIONS = ("bce", "mse")


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)) per sample, [B] (Kingma & Welling 2014, eq. 10 / app. B):
    -D_KL = 1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def _down(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(o),
                         nn.LeakyReLU(0.2, inplace=True))


def _up(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(i, o, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(o),
                         nn.ReLU(inplace=True))


class VAE(RetrievalModule):
    """Convolutional VAE on square crops (``image`` in [0, 1]).

    Encoder: one 4x4 stride-2 conv-BN-LeakyReLU per entry of ``channels`` (side / 2^len), then linear
    layers to mu and log sigma^2. Decoder: linear layer, transposed convs mirroring the encoder, the last
    one to ``in_chans`` channels, sigmoid (pixel means in [0, 1]).

    Loss (negative ELBO, Kingma & Welling eq. 10), per sample summed over pixels / latent dimensions and
    averaged over the batch: L = recon(x, x_hat) + beta * KL(q(z|x) || N(0, I)); recon = binary
    cross-entropy (Bernoulli decoder, on logits) or squared error (Gaussian decoder up to constants).
    z = mu + sigma * eps in training, z = mu in evaluation.

    Args:
        image_size: crop side (DeepLesion crops: 64); must be divisible by 2^len(channels).
        in_chans: image channels.
        channels: encoder widths (decoder mirrors them).
        latent_dim: dimension of z (and of the embedding mu).
        beta: weight of the KL term (1 = the VAE of Kingma & Welling).
        reconstruction: ``bce`` or ``mse``.
        lr: Adam learning rate.
        distance: search space of mu: ``euclidean`` (default) or ``cosine`` (the lesion paper ranks its VAE
            baseline by cosine). The paper's VAE has a ResNet-18 encoder; this one is the small conv encoder
            above (a documented difference).
    """

    search_space = "euclidean"

    def __init__(self, image_size: int = 64, in_chans: int = 3, channels: Sequence[int] = (32, 64, 128, 256),
                 latent_dim: int = 128, beta: float = 1.0, reconstruction: str = "bce", lr: float = 1e-3,
                 distance: str = "euclidean"):
        super().__init__()
        self.save_hyperparameters()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"model.distance={distance!r}: expected 'euclidean' or 'cosine'")
        self.search_space = distance
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"model.reconstruction={reconstruction!r}: expected one of {RECONSTRUCTIONS}")
        factor = 2 ** len(channels)
        if image_size < factor or image_size % factor:
            raise ValueError(f"model.image_size={image_size}: the VAE needs a square side divisible by {factor} "
                             f"({len(channels)} stride-2 convolutions, model.channels={list(channels)})")
        widths = [in_chans, *map(int, channels)]
        self.bottom = (widths[-1], image_size // factor, image_size // factor)
        flat = widths[-1] * self.bottom[1] * self.bottom[2]
        self.encoder = nn.Sequential(*(_down(i, o) for i, o in zip(widths[:-1], widths[1:])), nn.Flatten())
        self.to_mu, self.to_logvar = nn.Linear(flat, latent_dim), nn.Linear(flat, latent_dim)
        self.from_z = nn.Linear(latent_dim, flat)
        rev = widths[::-1]  # e.g. 256, 128, 64, 32, 3
        ups = [_up(i, o) for i, o in zip(rev[:-2], rev[1:-1])]
        self.decoder = nn.Sequential(*ups, nn.ConvTranspose2d(rev[-2], in_chans, 4, stride=2, padding=1))

    def encode(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """Posterior parameters (mu, log sigma^2), each [B, latent_dim]."""
        side = self.hparams.image_size
        if images.shape[-3:] != (self.hparams.in_chans, side, side):
            raise ValueError(f"VAE built for {self.hparams.in_chans} x {side} x {side} images (model.image_size, "
                             f"model.in_chans) but got {tuple(images.shape[-3:])}; set model.image_size to the "
                             f"data's crop size")
        h = self.encoder(images)
        return self.to_mu(h), self.to_logvar(h)

    def decode_logits(self, z: Tensor) -> Tensor:
        """Pixel logits [B, C, H, W]; sigmoid gives the reconstruction in [0, 1]."""
        return self.decoder(self.from_z(z).view(-1, *self.bottom))

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(reconstruction logits, mu, logvar)."""
        mu, logvar = self.encode(images)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decode_logits(z), mu, logvar

    def embed(self, images: Tensor) -> Tensor:
        return self.encode(images)[0]

    def vae_loss(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """(loss, reconstruction term, KL term), each averaged over the batch."""
        logits, mu, logvar = self(images)
        if self.hparams.reconstruction == "bce":
            recon = F.binary_cross_entropy_with_logits(logits, images, reduction="none")
        else:
            recon = (torch.sigmoid(logits) - images).pow(2)
        recon = recon.flatten(1).sum(1).mean()
        kl = gaussian_kl(mu.float(), logvar.float()).mean()
        return recon + self.hparams.beta * kl, recon, kl

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, recon, kl = self.vae_loss(batch["image"])
        bs = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log_dict({"train/recon": recon, "train/kl": kl}, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int, stage: str = "val") -> None:
        """Negative ELBO with z = mu on held-out crops (retrieval metrics come from the callback)."""
        loss, _, _ = self.vae_loss(batch["image"])
        self.log(f"{stage}/loss", loss, batch_size=batch["image"].shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx, stage="test")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

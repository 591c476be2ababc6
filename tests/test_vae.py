"""VAE baseline: KL term against its closed form, negative ELBO, embedding = mu, input-size checks."""
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_modules.vae import VAE, gaussian_kl

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vae(**kw):
    return VAE(**{"image_size": 32, "channels": (8, 16), "latent_dim": 4, **kw})


def test_kl_closed_form_hand_case():
    # mu = (1, 0), sigma^2 = (1, 4): 1/2 [(1 + 1 - 1 - 0) + (0 + 4 - 1 - log 4)] = 2 - log 2
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    assert gaussian_kl(mu, logvar).item() == pytest.approx(2 - math.log(2), abs=1e-6)
    assert gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).abs().max() == 0  # q = prior
    q = torch.distributions.Normal(torch.randn(2, 3), torch.rand(2, 3) + 0.5)
    p = torch.distributions.Normal(torch.zeros(2, 3), torch.ones(2, 3))
    ref = torch.distributions.kl_divergence(q, p).sum(1)
    assert torch.allclose(gaussian_kl(q.mean, 2 * q.stddev.log()), ref, atol=1e-5)


def test_loss_is_reconstruction_plus_beta_kl():
    torch.manual_seed(0)
    model = tiny_vae(beta=0.5).eval()  # z = mu: deterministic
    x = torch.rand(3, 3, 32, 32)
    loss, recon, kl = model.vae_loss(x)
    logits, mu, logvar = model(x)
    assert torch.allclose(recon, F.binary_cross_entropy(torch.sigmoid(logits), x, reduction="sum") / 3, rtol=1e-4)
    assert torch.allclose(kl, gaussian_kl(mu, logvar).mean()) and torch.allclose(loss, recon + 0.5 * kl)
    torch.manual_seed(0)
    mse_model = tiny_vae(beta=0.5, reconstruction="mse").eval()  # same weights, Gaussian decoder
    _, recon_mse, _ = mse_model.vae_loss(x)
    assert torch.allclose(recon_mse, (torch.sigmoid(logits) - x).pow(2).sum() / 3, rtol=1e-4)


def test_training_step_gives_finite_loss_with_graph():
    model = tiny_vae().train()
    loss = model.training_step({"image": torch.rand(4, 3, 32, 32)}, 0)
    assert torch.isfinite(loss) and loss.requires_grad
    loss.backward()
    assert model.encoder[0][0].weight.grad.abs().sum() > 0 and model.decoder[-1].weight.grad.abs().sum() > 0
    assert isinstance(model.configure_optimizers(), torch.optim.Adam)


def test_embedding_is_posterior_mean_and_reconstruction_in_unit_range():
    model = tiny_vae().eval()
    x = torch.rand(2, 3, 32, 32)
    emb = model.embed(x)
    assert emb.shape == (2, 4) and model.search_space == "euclidean"
    assert torch.equal(emb, model.encode(x)[0]) and torch.equal(emb, model.embed(x))
    model.train()
    assert torch.equal(model.embed(x[:1].expand(2, -1, -1, -1))[0], model.embed(x[:1].expand(2, -1, -1, -1))[1])
    recon = torch.sigmoid(model(x)[0])
    assert recon.shape == x.shape and recon.min() >= 0 and recon.max() <= 1


def test_default_architecture_for_64px_crops():
    model = VAE()
    assert model.bottom == (256, 4, 4) and model.to_mu.out_features == 128
    assert model.eval()(torch.rand(1, 3, 64, 64))[0].shape == (1, 3, 64, 64)


def test_size_errors_name_the_key():
    with pytest.raises(ValueError, match="model.image_size=40.*divisible by 16"):
        VAE(image_size=40)
    with pytest.raises(ValueError, match="model.image_size"):
        tiny_vae().embed(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="model.reconstruction='l1'"):
        tiny_vae(reconstruction="l1")

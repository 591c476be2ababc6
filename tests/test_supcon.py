"""SupCon: the loss against Khosla's equation, the DDP gather with 2 gloo processes, the module's options, and
the poster's recipes layered on the phantom config."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss

from experiments.cli import RetrievalCLI
from lightning_modules.components.supcon_loss import SupConLoss, supcon_loss
from lightning_modules.supcon import SupCon
from tests.conftest import CONFIGS, brats_args

pytestmark = pytest.mark.usefixtures("one_thread")


def test_equation_by_hand():
    """Three unit vectors at 0, 90 and 180 degrees; labels (a, a, b); t = 1. Anchor 0: positive 1, others 1, 2
    -> -log(e^0 / (e^0 + e^-1)); anchor 1: positive 0 -> -log(e^0 / (e^0 + e^0)); anchor 2: no positive."""
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 0, 1])
    expected = (-math.log(1 / (1 + math.exp(-1))) - math.log(0.5)) / 2
    assert float(supcon_loss(z, labels, 1.0)) == pytest.approx(expected)
    assert float(PMLSupConLoss(temperature=1.0)(z, labels)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("labels", [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 2, 2, 3, 3], [5, 5, 5, 7, 7, 9, 2, 2],
                                    [0, 1, 2, 3, 0, 1, 2, 3]])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_pytorch_metric_learning_equals_the_equation(labels, temperature):
    z = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(len(set(labels))), requires_grad=True)
    labels = torch.tensor(labels)
    ours = supcon_loss(z, labels, temperature)
    pml = PMLSupConLoss(temperature=temperature)(z, labels)
    assert float(pml.detach()) == pytest.approx(float(ours.detach()), rel=1e-5)
    g1, = torch.autograd.grad(ours, z)
    g2, = torch.autograd.grad(pml, z)
    assert torch.allclose(g1, g2, atol=1e-5)
    # the module, either implementation
    for impl in ("pml", "direct"):
        assert float(SupConLoss(temperature, impl)(z, labels)) == pytest.approx(float(ours), rel=1e-5)


def test_the_one_difference_a_batch_without_negatives():
    """pytorch-metric-learning returns 0 when no anchor has a negative; the equation does not (log(N - 1) for
    N equal embeddings). Training batches hold several patients, so this never matters there."""
    z, labels = torch.ones(4, 3), torch.zeros(4, dtype=torch.long)
    assert float(supcon_loss(z, labels, 1.0)) == pytest.approx(math.log(3), abs=1e-5)
    assert float(PMLSupConLoss(temperature=1.0)(z, labels)) == 0.0


def _ddp_worker(rank, world, port, z_all, labels_all, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        n = len(z_all) // world
        z = z_all[rank * n:(rank + 1) * n].clone().requires_grad_(True)
        loss = SupConLoss(0.1, "pml", gather_distributed=True)(z, labels_all[rank * n:(rank + 1) * n])
        loss.backward()
        out[rank] = (float(loss), z.grad.clone())
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_see_the_global_batch():
    """Under DDP each process computes L_out over the gathered batch of both: its loss is the single-process
    loss of the whole batch, and its gradient (after DDP's averaging over the 2 processes) too."""
    gen = torch.Generator().manual_seed(0)
    z_all = torch.randn(16, 8, generator=gen)
    labels = torch.arange(4).repeat_interleave(4)[torch.randperm(16, generator=gen)]
    full = z_all.clone().requires_grad_(True)
    loss = supcon_loss(full, labels, 0.1)
    loss.backward()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    # fork: the workers need nothing but torch (spawn would re-import this module and Lightning, ~1 min)
    mp.start_processes(_ddp_worker, args=(2, port, z_all, labels, out), nprocs=2, join=True, start_method="fork")
    for rank in (0, 1):
        rank_loss, grad = out[rank]
        assert rank_loss == pytest.approx(float(loss), rel=1e-5)
        assert torch.allclose(grad / 2, full.grad[rank * 8:(rank + 1) * 8], atol=1e-6)   # DDP averages by 2


def batch(b=3, size=32):
    return {"image": torch.randn(b, 4, size, size), "patient_id": torch.tensor([3, 8, 5])[:b],
            "slice_index": torch.zeros(b, dtype=torch.long)}


def test_module_losses_reconstruction_and_frozen_encoder():
    torch.manual_seed(0)
    model = SupCon(proj_hidden_dim=32, proj_dim=16, recon_weight=0.5, recon_size=16, augment=False)
    out = model.losses(batch())
    assert set(out) == {"loss", "supcon", "recon"}
    assert float(out["loss"]) == pytest.approx(float(out["supcon"] + 0.5 * out["recon"]))
    assert model.slice_labels(batch(), 4).tolist() == [3] * 4 + [8] * 4 + [5] * 4
    assert model.view_transform() is None and SupCon(augment=True).view_transform() is not None
    assert SupCon(recon_weight=0.0).decoder is None
    assert model.embed(torch.randn(2, 1, 32, 32)).shape == (2, 512)
    with pytest.raises(ValueError, match=r"single-sequence images \[B, 1, H, W\]"):
        model.embed(torch.randn(2, 4, 32, 32))
    frozen = SupCon(freeze_encoder=True, proj_hidden_dim=32, proj_dim=16, augment=False).train()
    assert not frozen.encoder.training and frozen.projector.training
    assert not any(p.requires_grad for p in frozen.encoder.parameters())
    before = {k: v.clone() for k, v in frozen.encoder.state_dict().items()}
    opt = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1)
    frozen.losses(batch())["loss"].backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in frozen.encoder.state_dict().items())


def test_views_augment_each_sequence_independently():
    views = SupCon(augment=True).view_transform()
    torch.manual_seed(0)
    image = torch.zeros(4, 32, 32)
    image[:, 8:24, 8:24] = 1.0
    out = views({"image": image})["views"]
    assert out.shape == (4, 32, 32)
    assert not torch.equal(out[0], out[1])


def test_pretrained_weights_from_a_local_file(tmp_path):
    import timm

    rgb = timm.create_model("resnet18", num_classes=0)
    torch.save(rgb.state_dict(), tmp_path / "resnet18.pth")
    model = SupCon(pretrained=str(tmp_path / "resnet18.pth"))
    summed = rgb.conv1.weight.sum(1, keepdim=True)            # timm adapts RGB to 1 channel by summing
    assert torch.allclose(model.encoder.conv1.weight, summed, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        SupCon(pretrained=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("kw, match", [(dict(optimizer="adagrad"), "optimizer"), (dict(positives="study"), "positives"),
                                       (dict(recon_weight=-1), "recon_weight"), (dict(temperature=0), "temperature"),
                                       (dict(loss_implementation="other"), "loss_implementation"),
                                       (dict(recon_weight=1, recon_size=48), "recon_size"),
                                       (dict(crop_scale=(0.0, 1.0)), "crop_scale")])
def test_bad_keys(kw, match):
    with pytest.raises(ValueError, match=match):
        SupCon(**kw)


RECIPES = sorted((CONFIGS / "recipes" / "supcon").glob("*.yaml"))


def test_poster_recipes_layer_on_the_configs(brats_root, tmp_path):
    """Each poster row is a recipe layered on the phantom config; the cumulative chain of the poster
    (pretrained -> big batch -> + augmentation -> + reconstruction) on the paper config."""
    import timm

    weights = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), weights)

    def parse(base, *recipes):
        layered = [a for r in recipes for a in ("--config", str(CONFIGS / "recipes" / "supcon" / f"{r}.yaml"))]
        return RetrievalCLI(args=["--config", str(CONFIGS / base), *brats_args(tmp_path, brats_root), *layered,
                                  f"--model.init_args.pretrained={weights}" if "pretrained" in recipes else
                                  "--model.init_args.lr=0.001"], run=False)

    assert {p.stem for p in RECIPES} == {"scratch", "pretrained", "big_batch", "augmentation", "reconstruction",
                                         "no_training"}
    checks = {"scratch": lambda c, h: h.pretrained is None and not h.augment and h.recon_weight == 0,
              "pretrained": lambda c, h: h.pretrained == str(weights) and not h.freeze_encoder,
              "big_batch": lambda c, h: c.datamodule.batch_size == 128,
              "augmentation": lambda c, h: h.augment, "reconstruction": lambda c, h: h.recon_weight == 1.0,
              "no_training": lambda c, h: h.freeze_encoder and c.trainer.max_epochs == 1}
    for name, check in checks.items():
        cli = parse("supcon_phantom.yaml", name)
        assert check(cli, cli.model.hparams), name
    cli = parse("supcon_brats.yaml", "pretrained", "big_batch", "augmentation", "reconstruction")
    h = cli.model.hparams
    assert h.pretrained and cli.datamodule.batch_size == 128 and h.augment and h.recon_weight == 1.0

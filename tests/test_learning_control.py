"""The equal-steps control used by every "training improves" check: weights stay, BatchNorm statistics move."""
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.learning import FrozenWeights, LearningResult


class TinyNet(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.net(x) - y) ** 2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-2)


def test_frozen_weights_keeps_parameters_but_updates_batchnorm(tmp_path):
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(64, 4) * 3 + 2, torch.randn(64, 1)), batch_size=16)
    model = TinyNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    bn_mean = model.net[1].running_mean.clone()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[FrozenWeights()],
                         default_root_dir=tmp_path)
    trainer.fit(model, data)
    assert trainer.global_step == 8
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n
    assert not torch.allclose(model.net[1].running_mean, bn_mean)


def test_learning_result_needs_both_baselines_beaten():
    assert LearningResult(0, untrained=0.5, control=0.6, trained=0.7).passed(0.05)
    assert not LearningResult(0, untrained=0.5, control=0.68, trained=0.7).passed(0.05)
    assert not LearningResult(0, untrained=0.66, control=0.5, trained=0.7).passed(0.05)

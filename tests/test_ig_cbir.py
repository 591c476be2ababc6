"""IG-CBIR module: the two steps in one fit, the frozen step-1 model, the CNN baseline, checkpoints."""
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from callbacks import RetrievalEvaluation
from callbacks.explained_retrieval import ExplainedRetrievalGrid
from datamodules.chexpert import CheXpertDataModule
from datamodules.synthetic.chexpert import write_chexpert_phantom
from lightning_modules.components.saliency import normalise
from lightning_modules.ig_cbir import IGCBIR


@pytest.fixture(scope="module")
def cx_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("igcbir") / "CheXpert-v1.0-small"
    return write_chexpert_phantom(root, n_train_patients=8, n_valid_patients=12, image_shape=(36, 32), seed=0)


def data(root, **kw):
    return CheXpertDataModule(str(root), image_size=32, projections=None, num_workers=0, batch_size=8,
                              val_fraction=0.25, **kw)


def fit(model, root, epochs, tmp_path, extra=(), **trainer_kw):
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path,
                         callbacks=[RetrievalEvaluation(k_values=[1, 3], metrics=["P"]), *extra], **trainer_kw)
    trainer.fit(model, datamodule=data(root))
    return trainer


def weights(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_two_steps_in_one_fit(cx_root, tmp_path, one_thread):
    """Epoch 0 trains the classifier; at epoch 1 it is copied and frozen, and only the copy learns."""
    pl.seed_everything(0)
    model = IGCBIR("densenet_tiny", classifier_epochs=1)
    start = weights(model.classifier)
    probes = {}

    class Probe(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            probes[trainer.current_epoch] = (weights(pl_module.classifier), weights(pl_module.finetuned))

    grid = ExplainedRetrievalGrid(n_queries=2, n_worst=0, k=3)
    trainer = fit(model, cx_root, 2, tmp_path, extra=[grid, Probe()])
    assert grid.last_path.endswith("explained_val_epoch001.png") and Path(grid.last_path).is_file()
    (cls0, _), (cls1, ft1) = probes[0], probes[1]
    assert any(not torch.equal(start[k], cls0[k]) for k in start)               # step 1 trained the classifier
    assert all(torch.equal(cls0[k], cls1[k]) for k in cls0)                     # frozen in step 2 (BN stats too)
    assert any(not torch.equal(cls1[k], ft1[k]) for k in cls1 if "weight" in k)  # the copy moved
    assert model.in_step2 and not model.classifier.training and len(model._cache) > 0
    assert trainer.callback_metrics["train/step"] == 2.0
    # The checkpoint holds both networks: reload -> same IG-CBIR and CNN embeddings.
    path = tmp_path / "both.ckpt"
    trainer.save_checkpoint(path)
    again = IGCBIR.load_from_checkpoint(path).eval()
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    assert again.in_step2 and torch.allclose(again.embed(x), model.embed(x), atol=1e-3)
    cnn = IGCBIR.load_from_checkpoint(path, embedding="cnn").eval()
    assert torch.allclose(cnn.embed(x), model.classifier.features(normalise(x)), atol=1e-5)
    # step 2 can also start from a saved classifier (two chained configs)
    chained = IGCBIR("densenet_tiny", classifier_epochs=0, stage1_checkpoint=str(path))
    assert all(torch.equal(chained.classifier.state_dict()[k], cls1[k]) for k in cls1)


def test_adadelta_has_the_keras_defaults():
    opt = IGCBIR("densenet_tiny").configure_optimizers()
    assert isinstance(opt, torch.optim.Adadelta)
    assert (opt.defaults["lr"], opt.defaults["rho"], opt.defaults["eps"]) == (1.0, 0.95, 1e-7)


@pytest.mark.parametrize("key, value", [("embedding", "hash"), ("rule_map", "lrp_eps"),
                                        ("output_relevance", "softmax"), ("architecture", "resnet50")])
def test_bad_keys_are_clear_errors(key, value):
    with pytest.raises(ValueError, match=f"{key}={value!r}"):
        IGCBIR(**{"architecture": "densenet_tiny", key: value})


def test_missing_pretrained_or_stage1_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pretrained="):
        IGCBIR("densenet_tiny", pretrained=str(tmp_path / "none.pth"))
    with pytest.raises(FileNotFoundError, match="stage1_checkpoint"):
        IGCBIR("densenet_tiny", stage1_checkpoint=str(tmp_path / "none.ckpt"))


@pytest.mark.slow
def test_ig_cbir_learns_and_prints_ssim_cnn_ig_cbir(tmp_path_factory, one_thread):
    """Phantom, paper protocol keys beside all-queries P@10: IG-CBIR beats its untrained network and the
    equal-steps frozen-weights control (tests.learning); SSIM / CNN / IG-CBIR printed side by side."""
    from lightning_modules.ssim_baseline import SSIMBaseline
    from tests.learning import assert_learns

    root = write_chexpert_phantom(tmp_path_factory.mktemp("learn") / "CheXpert-v1.0-small", 40, 120, (36, 32), 0)
    make_data = lambda: data(root)  # noqa: E731
    make_cb = lambda: RetrievalEvaluation(k_values=[10], metrics=["P"], protocols=["all_queries", "paper"])  # noqa
    tmp = tmp_path_factory.mktemp("runs")
    results = assert_learns(lambda: IGCBIR("densenet_tiny", classifier_epochs=3, embedding="ig_cbir"),
                            make_data, make_cb, epochs=6, key="test/P@10", tmp_path=tmp, margin=0.03)
    dm = make_data()
    assert len(dm.retrieval_dataset("test")) >= 100                               # >= 100 queries
    # side by side on the last seed: SSIM, CNN (step-1 features), IG-CBIR
    pl.seed_everything(results[-1].seed)
    model = IGCBIR("densenet_tiny", classifier_epochs=3)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=6, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, callbacks=[make_cb()], default_root_dir=tmp)
    trainer.fit(model, datamodule=dm)
    rows = {"SSIM": trainer.test(SSIMBaseline(), datamodule=dm, verbose=False)[0],
            "IG-CBIR": trainer.test(model, datamodule=dm, verbose=False)[0]}
    model.hparams.embedding = "cnn"
    rows["CNN"] = trainer.test(model, datamodule=dm, verbose=False)[0]
    keys = ["test/P@10"] + [f"test/paper/P@cat{n}" for n in (10, 20, 30)]
    print("\n" + "method    " + "  ".join(k.split("/")[-1] for k in keys))
    for name in ("SSIM", "CNN", "IG-CBIR"):
        r = rows[name]
        print(f"{name:9s} " + "  ".join(f"{r[k]:.2f} [{r.get(k + '_min', np.nan):.2f}, {r.get(k + '_max', np.nan):.2f}]"
                                         if "cat" in k else f"{r[k]:.3f}" for k in keys))
    assert all(0 <= rows[n]["test/P@10"] <= 1 for n in rows)

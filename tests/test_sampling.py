"""Reproducible, resumable training order and per-sample augmentation seeds."""
import torch

from datamodules.base import TransformedDataset
from datamodules.sampling import EpochSeededSampler, ResumableDataLoader


class Numbers(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return {"index": torch.tensor(i), "image": torch.zeros(1)}


def noise(sample):
    sample["noise"] = torch.rand(1)
    return sample


def batches(loader):
    return [b["index"].tolist() for b in loader]


def test_order_depends_on_seed_and_epoch_only():
    a, b = EpochSeededSampler(Numbers(), seed=1), EpochSeededSampler(Numbers(), seed=1)
    assert list(a) == list(b) and sorted(i for _, i in a) == list(range(10))
    b.set_epoch(1)
    assert [i for _, i in a] != [i for _, i in b] and all(e == 1 for e, _ in b)


def test_ranks_partition_the_epoch():
    keys = [k for r in range(2) for k in EpochSeededSampler(Numbers(), num_replicas=2, rank=r)]
    assert sorted(i for _, i in keys) == list(range(10))


def test_loader_resumes_after_finished_batches():
    done = {"n": 0}
    ds = TransformedDataset(Numbers(), noise, seed=3)

    def loader():
        return ResumableDataLoader(ds, batch_size=3, sampler=EpochSeededSampler(ds, seed=3),
                                   batches_done=lambda: done["n"])

    full = batches(loader())
    done["n"] = 2
    state = loader().state_dict()
    assert state == {"epoch": 0, "batches_done": 2}
    resumed = loader()
    resumed.load_state_dict(state)
    assert batches(resumed) == full[2:]
    assert batches(resumed) == full  # the skip applies to one iteration only
    end = loader()
    end.load_state_dict({"epoch": 0, "batches_done": 4})  # saved at the end of epoch 0
    assert end.sampler.epoch == 1 and end.sampler.skip_samples == 0


def test_augmentation_seeded_per_sample_and_caller_rng_untouched():
    ds = TransformedDataset(Numbers(), noise, seed=5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    x = ds[(2, 7)]["noise"]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(ds[(2, 7)]["noise"], x)
    assert not torch.equal(ds[(3, 7)]["noise"], x) and not torch.equal(ds[(2, 6)]["noise"], x)

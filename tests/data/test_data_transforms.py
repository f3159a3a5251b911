"""Normalisation, crop+flip augmentation (fast path vs reference) and the batch pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnconv.data import (
    ImageArrays,
    ImageBatches,
    ImageDataset,
    augment_batch,
    compute_stats,
    dataset_stats,
    normalize,
)
from attnconv.data.transforms import crop_flip, crop_flip_reference, draw_crop_flip
from attnconv.errors import ConfigError


def _arrays(n: int = 10, name: str = "cifar10", size: int = 8, channels: int = 3) -> ImageArrays:
    rng = np.random.default_rng(0)
    return ImageArrays(rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8),
                       np.arange(n) % 3, ["a", "b", "c"], name)


def test_fast_crop_flip_matches_reference() -> None:
    images = torch.randint(0, 256, (16, 3, 9, 7), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    for pad in (0, 1, 4):
        offsets, flips = draw_crop_flip(16, generator, pad)
        fast = crop_flip(images, offsets, flips, pad)
        for b in range(16):
            ref = crop_flip_reference(images[b], int(offsets[b, 0]), int(offsets[b, 1]),
                                      bool(flips[b]), pad)
            assert torch.equal(fast[b], ref)


def test_augment_shapes_range_and_determinism() -> None:
    images = torch.rand(32, 3, 32, 32)
    out = augment_batch(images, torch.Generator().manual_seed(5))
    assert out.shape == images.shape and out.dtype == images.dtype
    same = augment_batch(images, torch.Generator().manual_seed(5))
    other = augment_batch(images, torch.Generator().manual_seed(6))
    assert torch.equal(out, same)
    assert not torch.equal(out, other)
    offsets, flips = draw_crop_flip(4000, torch.Generator().manual_seed(0), pad=4)
    assert offsets.min() == 0 and offsets.max() == 8
    assert 0.45 < flips.float().mean() < 0.55


def test_augment_pads_with_zeros_and_identity_without_randomness() -> None:
    images = torch.full((2, 1, 4, 4), 9.0)
    corner = crop_flip(images, torch.tensor([[0, 0], [8, 8]]), torch.tensor([False, False]))
    assert corner[0, 0, 0, 0] == 0 and corner[0, 0, 3, 3] == 0  # 4 px shift, all padding
    assert (corner[1] == 0).all()
    centred = crop_flip(images, torch.tensor([[4, 4], [4, 4]]), torch.tensor([False, True]))
    assert torch.equal(centred, images)
    assert torch.equal(augment_batch(images, None, pad=0, flip=False), images)


def test_normalize_uint8_and_float_agree() -> None:
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (images.float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(
        std).view(3, 1, 1)
    assert torch.allclose(normalize(images, mean, std), expected, atol=1e-5)
    assert torch.allclose(normalize(images.float() / 255, mean, std), expected, atol=1e-5)
    assert normalize(images[0], mean, std).shape == (3, 4, 4)


def test_stats() -> None:
    assert dataset_stats("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert dataset_stats("fashion-mnist") == ((0.2860,), (0.3530,))
    with pytest.raises(ConfigError, match="compute_stats"):
        dataset_stats("imagefolder")
    arrays = _arrays(n=50)
    mean, std = compute_stats(arrays, chunk=7)
    pixels = arrays.images.reshape(-1, 3) / 255
    np.testing.assert_allclose(mean, pixels.mean(0))
    np.testing.assert_allclose(std, pixels.std(0))


def test_image_batches_order_and_augmentation_are_seeded() -> None:
    arrays = _arrays(n=10)

    def run(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batches = ImageBatches(arrays, 4, shuffle=True, augment=True,
                               generator=torch.Generator().manual_seed(seed))
        return [b for _ in range(2) for b in batches]  # two epochs

    first, again = run(0), run(0)
    assert [x.shape[0] for x, _ in first] == [4, 4, 2, 4, 4, 2]
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2)
        assert torch.equal(y1, y2)
    epoch_labels = [torch.cat([y for _, y in first[i:i + 3]]) for i in (0, 3)]
    assert sorted(epoch_labels[0].tolist()) == sorted(arrays.labels.tolist())
    assert not torch.equal(epoch_labels[0], epoch_labels[1])  # new order each epoch
    x, y = first[0]
    assert x.dtype == torch.float32 and x.shape == (4, 3, 8, 8) and y.dtype == torch.int64


def test_image_batches_plain_pass_matches_dataset() -> None:
    arrays = _arrays(n=5, name="embedded", size=6, channels=1)
    batches = ImageBatches(arrays, 2, drop_last=True)
    assert len(batches) == 2
    dataset = ImageDataset(arrays)
    assert len(dataset) == 5
    x, _ = next(iter(batches))
    for i in range(2):
        item, label = dataset[i]
        assert item.shape == (1, 6, 6) and label == int(arrays.labels[i])
        assert torch.allclose(x[i], item)
    expected = (arrays.images[0, ..., 0] / 255 - 0.2840) / 0.3513
    np.testing.assert_allclose(dataset[0][0][0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_image_dataset_augmentation_and_dataloader() -> None:
    arrays = _arrays(n=6)
    a = ImageDataset(arrays, augment=True, generator=torch.Generator().manual_seed(1))
    b = ImageDataset(arrays, augment=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a[3][0], b[3][0])
    loader = torch.utils.data.DataLoader(a, batch_size=4)
    x, y = next(iter(loader))
    assert x.shape == (4, 3, 8, 8) and y.tolist() == [0, 1, 2, 0]
    folder = _arrays(n=2, name="imagefolder")
    with pytest.raises(ConfigError):
        ImageDataset(folder)
    assert ImageDataset(folder, mean=(0.5,) * 3, std=(0.25,) * 3)[0][0].shape == (3, 8, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_image_batches_on_cuda_match_cpu() -> None:
    arrays = _arrays(n=9)
    cpu = ImageBatches(arrays, 4, shuffle=True, augment=True,
                       generator=torch.Generator().manual_seed(3))
    gpu = ImageBatches(arrays, 4, shuffle=True, augment=True,
                       generator=torch.Generator().manual_seed(3), device="cuda")
    for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.allclose(xg.cpu(), xc, atol=1e-6)
        assert torch.equal(yg.cpu(), yc)

"""facekd.eval.embed: flip-summed normalised embeddings of a tiny real backbone, resizing, datasets, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from facekd.eval.embed import (EmbeddingError, embed_dataset, embed_images, model_input_size, to_model_input)
from facekd.models.registry import build_backbone


@pytest.fixture(scope="module")
def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_backbone("r18", input_size=32, width=0.125, embedding_size=16)
    # give the batch norms non-trivial running statistics, then evaluate
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))
    return model.eval()


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_flip_sum_then_normalise(tiny_model) -> None:
    images = _images(5)
    emb = embed_images(tiny_model, images, batch_size=2, show_progress=False)
    x = to_model_input(images)
    with torch.no_grad():
        raw = (tiny_model(x) + tiny_model(torch.flip(x, dims=[3]))).numpy()
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert emb.dtype == np.float32 and emb.shape == (5, 16)
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    unnorm = embed_images(tiny_model, images, batch_size=4, normalise=False, show_progress=False)
    np.testing.assert_allclose(unnorm, raw, rtol=1e-4, atol=1e-5)


def test_normalisation_matches_face_convention() -> None:
    x = to_model_input(np.array([[[[0, 255, 128]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 1, 1)
    np.testing.assert_allclose(x.flatten().numpy(), [-1.0, 1.0, 128 / 255 * 2 - 1], atol=1e-6)


def test_batch_size_does_not_change_results_and_mode_is_restored(tiny_model) -> None:
    images = _images(7, seed=1)
    tiny_model.train()
    a = embed_images(tiny_model, images, batch_size=7, show_progress=False)
    assert tiny_model.training  # restored
    tiny_model.eval()
    b = embed_images(tiny_model, images, batch_size=3, show_progress=False)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_no_flip_differs_from_flip(tiny_model) -> None:
    images = _images(3, seed=2)
    a = embed_images(tiny_model, images, flip=False, show_progress=False)
    b = embed_images(tiny_model, images, flip=True, show_progress=False)
    assert not np.allclose(a, b)


def test_images_are_resized_to_the_model_input(tiny_model, caplog) -> None:
    assert model_input_size(tiny_model) == (32, 32)
    with caplog.at_level("INFO", logger="facekd"):
        emb = embed_images(tiny_model, _images(2, size=48), show_progress=False)
    assert emb.shape == (2, 16) and np.all(np.isfinite(emb))


def test_embed_dataset_reads_in_blocks(tiny_model) -> None:
    class ListDataset:
        def __init__(self, images: np.ndarray, labels: list[int]) -> None:
            self.images, self.labels = images, labels

        def __len__(self) -> int:
            return len(self.labels)

        def read(self, i: int) -> tuple[np.ndarray, int]:
            return self.images[i], self.labels[i]

    images = _images(5, seed=3)
    emb, labels = embed_dataset(tiny_model, ListDataset(images, [3, 3, 1, 0, 2]), batch_size=1,
                                show_progress=False)
    np.testing.assert_array_equal(labels, [3, 3, 1, 0, 2])
    np.testing.assert_allclose(emb, embed_images(tiny_model, images, show_progress=False), rtol=1e-5, atol=1e-5)
    with pytest.raises(EmbeddingError, match="no images"):
        embed_dataset(tiny_model, ListDataset(images[:0], []), show_progress=False)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 32, 32), np.uint8), r"\[N, H, W, 3\]"),
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"),
])
def test_bad_images_raise(tiny_model, bad, match) -> None:
    with pytest.raises(EmbeddingError, match=match):
        embed_images(tiny_model, bad, show_progress=False)


def test_callable_models_are_accepted() -> None:
    """Anything mapping a normalised float batch to [N, D] works (the ONNX backbone's contract)."""
    def mean_colour(x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    images = _images(4, size=8, seed=4)
    emb = embed_images(mean_colour, images, show_progress=False)
    raw = 2 * to_model_input(images).mean(dim=(2, 3)).numpy()  # a flip leaves the mean colour unchanged
    np.testing.assert_allclose(emb, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)

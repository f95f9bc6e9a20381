"""A small MNIST digit classifier, the judge of how digit-like completions look (section 5).

An MLP 784-512-256-10 trained with plain PyTorch (it is a measuring instrument, not a model of
the tutorial) on the training split, half of each batch grayscale and half dynamically binarized,
so that it reads both probability maps and binary digits. Its test accuracy is reported with
every number it produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.data import NUM_CLASSES, NUM_PIXELS, binarize, fixed_binarization, load_mnist, minibatch_indices
from pyro_vae.nets import MLP


@dataclass(frozen=True)
class DigitClassifier:
    """A trained classifier and its test accuracy on grayscale and on binarized digits."""

    network: nn.Module
    accuracy_grayscale: float
    accuracy_binarized: float

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(..., 10)`` of images ``(..., 784)`` in [0, 1]."""
        return torch.softmax(self.network(images), dim=-1)


def train_digit_classifier(
    *,
    epochs: int = 5,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    subset: int | None = None,
    data_dir=None,
    device: torch.device | str = "cpu",
) -> DigitClassifier:
    """Train the classifier and measure its accuracy on the test split (10,000 digits)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train = load_mnist("train", data_dir, subset=subset, device=device)
    network = MLP(NUM_PIXELS, (512, 256), NUM_CLASSES).to(device)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    network.train()
    for _ in range(epochs):
        for idx in minibatch_indices(len(train), batch_size, generator=generator, device=device):
            images, labels = train.images[idx], train.labels[idx]
            half = images.shape[0] // 2
            images = torch.cat([images[:half], binarize(images[half:])])
            loss = F.cross_entropy(network(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    network.eval()
    test = load_mnist("test", data_dir, device=device)
    with torch.no_grad():
        gray = float((network(test.images).argmax(-1) == test.labels).float().mean())
        binary_images = fixed_binarization(test.images, seed + 1)
        binary = float((network(binary_images).argmax(-1) == test.labels).float().mean())
    return DigitClassifier(network, gray, binary)

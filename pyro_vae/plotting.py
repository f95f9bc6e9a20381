"""Figures of a run: image grids (samples, reconstructions) and ELBO curves.

Uses matplotlib's object-oriented API (``Figure`` + Agg canvas) so that importing this module
neither selects a global backend nor needs a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid

from .data import IMAGE_SHAPE


def image_grid(
    images: torch.Tensor,
    *,
    num_columns: int | None = None,
    padding: int = 2,
    image_shape: tuple[int, int] = IMAGE_SHAPE,
) -> np.ndarray:
    """Tile ``(N, H*W)`` images in [0, 1] into one ``(rows*(H+p)+p, cols*(W+p)+p)`` array.

    ``torchvision.utils.make_grid`` with white padding: ``num_columns`` per row (default the
    square root of N rounded up; fewer when there are fewer images).
    """
    images = images.detach().float().cpu().reshape(-1, 1, *image_shape).clamp(0, 1)
    cols = num_columns or math.ceil(math.sqrt(images.shape[0]))
    grid = make_grid(images, nrow=cols, padding=padding, pad_value=1.0)  # (3, height, width)
    return grid[0].numpy().astype(np.float64)


def save_image_grid(
    path: str | os.PathLike,
    images: torch.Tensor,
    *,
    num_columns: int | None = None,
    title: str | None = None,
    upscale: int = 3,
) -> None:
    """Write ``images`` as a gray PNG grid (pixel-exact, ``upscale`` x magnified)."""
    grid = image_grid(images, num_columns=num_columns)
    grid = np.kron(grid, np.ones((upscale, upscale)))
    height, width = grid.shape
    dpi = 100
    fig = Figure(figsize=(width / dpi, (height + (30 if title else 0)) / dpi), dpi=dpi)
    ax = fig.add_axes((0, 0, 1, height / (height + (30 if title else 0))))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10, y=0.995, va="top")
    fig.savefig(path, dpi=dpi)


def save_elbo_curves(
    path: str | os.PathLike, train_elbo: Sequence[float], valid_elbo: Sequence[float]
) -> None:
    """Plot train and validation ELBO (nats per image) against the epoch."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    epochs = np.arange(1, len(train_elbo) + 1)
    ax.plot(epochs, train_elbo, marker="o", label="train")
    ax.plot(epochs, valid_elbo, marker="s", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per image)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


#: Colours of the conditioning column in completion figures (as in the tutorial's Fig. 8).
COLUMN_ON = (1.0, 0.55, 0.0)  # orange: pixel 1
COLUMN_OFF = (0.15, 0.35, 1.0)  # blue: pixel 0


def completion_images(column_pixels: torch.Tensor, rest: torch.Tensor, column: int) -> np.ndarray:
    """RGB digits ``(N, 28, 28, 3)``: the completed pixels in gray, the given column in orange/blue."""
    from .data import merge_column

    gray = merge_column(column_pixels, rest, column).detach().float().cpu().clamp(0, 1)
    gray = gray.reshape(-1, *IMAGE_SHAPE).numpy()
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    on = column_pixels.detach().float().cpu().numpy() > 0.5  # (N, 28)
    rgb[:, :, column, :] = np.where(on[..., None], COLUMN_ON, COLUMN_OFF)
    return rgb


def save_completion_figure(
    path: str | os.PathLike,
    column_pixels: torch.Tensor,
    rows: Sequence[tuple[str, torch.Tensor]],
    column: int,
    *,
    title: str | None = None,
) -> None:
    """Fig. 8 layout: one digit per column; each row an output (samples, regressor, ground truth).

    ``rows`` holds ``(label, rest)`` pairs with ``rest`` of shape ``(N, 756)`` for the ``N`` inputs
    ``column_pixels`` ``(N, 28)``; the input column is drawn in colour in every panel.
    """
    num_digits = column_pixels.shape[0]
    fig = Figure(figsize=(0.62 * num_digits + 1.6, 0.66 * len(rows) + (0.4 if title else 0.1)), dpi=110)
    axes = fig.subplots(len(rows), num_digits, squeeze=False)
    for r, (label, rest) in enumerate(rows):
        images = completion_images(column_pixels, rest, column)
        for c in range(num_digits):
            ax = axes[r][c]
            ax.imshow(images[c], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(
        left=1.5 / fig.get_figwidth(),
        right=0.99,
        wspace=0.05,
        hspace=0.08,
        top=0.9 if title else 0.98,
        bottom=0.02,
    )
    fig.savefig(path)

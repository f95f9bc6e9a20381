"""The README's "Extending" example runs as written and gives a correct, trainable likelihood."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from pyro_vae import VAEConfig, build_vae, train
from pyro_vae.builders import LIKELIHOODS

README = Path(__file__).resolve().parents[1] / "README.md"


def extending_example() -> str:
    section = README.read_text().split("## Extending", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.+?)\n```", section, flags=re.S)
    return code


def test_extending_example_defines_a_correct_trainable_likelihood(small_train_images, monkeypatch):
    monkeypatch.setattr("pyro_vae.builders.LIKELIHOODS", dict(LIKELIHOODS))  # keep the registry clean
    namespace: dict = {}
    exec(compile(extending_example(), str(README), "exec"), namespace)
    student_t = namespace["StudentTLikelihood"](df=4.0, scale=0.2)
    params, x = torch.randn(3, 5, dtype=torch.float64), torch.rand(3, 5, dtype=torch.float64)
    expected = stats.t(4.0, torch.sigmoid(params).numpy(), 0.2).logpdf(x.numpy()).sum(-1)
    assert np.allclose(student_t(params).log_prob(x).numpy(), expected, atol=1e-9)

    vae = build_vae(VAEConfig(z_dim=4, hidden_sizes=(64,), likelihood="student-t", sigma=0.1))
    images = small_train_images[:1000]
    history = train(
        vae, (images,), (small_train_images[1000:1200],), epochs=2, lr=3e-3, progress=False, log=None
    )
    assert all(math.isfinite(v) for v in history.valid_elbo)
    assert history.valid_elbo[-1] > history.valid_elbo[0]

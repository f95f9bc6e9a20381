"""Section 4.1's latent sizes: active units on known covariances, the claims' rule, and the study."""

from __future__ import annotations

import json
import math

import pyro.distributions as dist
import pytest
import torch
from torch import nn

from analysis import latent_dim
from analysis.common import run_study
from pyro_vae.evaluation import ACTIVITY_THRESHOLD, latent_statistics
from pyro_vae.priors import StandardNormalPrior

#: Standard deviations of the posterior means over x: variances 1, 0.05, 0.02 (> 0.01) and
#: 0.005, 0 (<= 0.01), so exactly 3 active units.
MEAN_SDS = torch.tensor([1.0, 0.05**0.5, 0.02**0.5, 0.005**0.5, 0.0], dtype=torch.float64)
POSTERIOR_SCALE = 0.3


class LinearGaussianModel(nn.Module):
    """q(z|x) = N(offset + MEAN_SDS * x, 0.3^2 I) for x ~ N(0, I): Cov_x E_q[z_u] = MEAN_SDS_u^2."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.prior = StandardNormalPrior(len(MEAN_SDS)).double()

    def encoder(self, x: torch.Tensor) -> dist.Distribution:
        loc = self.offset + MEAN_SDS * x
        return dist.Normal(loc, torch.full_like(loc, POSTERIOR_SCALE)).to_event(1)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_active_units_and_kl_per_unit_on_known_covariances(offset):
    num = 40_000
    x = torch.randn(num, len(MEAN_SDS), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    stats = latent_statistics(LinearGaussianModel(offset), x, batch_size=999)
    variances = MEAN_SDS**2
    # the sample variance of N normal values has sd  variance * sqrt(2 / (N - 1))
    assert torch.all((stats.activity - variances).abs() <= 4 * variances * math.sqrt(2 / (num - 1)) + 1e-12)
    assert stats.num_active() == 3
    assert stats.active().tolist() == [True, True, True, False, False]
    # E_x KL(N(m + a x, s^2) || N(0, 1)) = (s^2 + m^2 + a^2 - 1 - log s^2) / 2, unit by unit
    expected_kl = 0.5 * (POSTERIOR_SCALE**2 + offset**2 + variances - 1 - math.log(POSTERIOR_SCALE**2))
    mean_square_error = 0.5 * 4 * (2 * offset * MEAN_SDS + 2 * variances) / math.sqrt(num)
    assert torch.all((stats.kl_per_unit - expected_kl).abs() <= mean_square_error + 1e-9 * expected_kl)
    assert stats.kl_per_datapoint.shape == (num,)
    assert float(stats.kl_per_datapoint.mean()) == pytest.approx(float(stats.kl_per_unit.sum()), rel=1e-12)
    assert stats.kl_of_inactive_units() == pytest.approx(float(stats.kl_per_unit[3:].sum()))
    # The batch size only changes the order of the sums.
    whole = latent_statistics(LinearGaussianModel(offset), x, batch_size=num)
    assert torch.allclose(whole.activity, stats.activity, rtol=1e-9, atol=1e-12)
    assert stats.num_active(threshold=0.03) == 2 and ACTIVITY_THRESHOLD == 0.01


def test_chunk_size_bounds_the_latent_tensor():
    assert latent_dim.chunk_size_for(10_000, 100) == 20  # 20 x 100 x 10,000 = 2e7 numbers
    assert latent_dim.chunk_size_for(30, 100) == 200  # the estimator's 20,000 pairs
    assert latent_dim.chunk_size_for(10**9, 100) == 1


def synthetic_log_likelihoods(means: dict[int, float], noise: float = 0.3) -> dict[int, torch.Tensor]:
    """Per-image values on 400 shared 'images': a common difficulty plus a small model-specific noise."""
    generator = torch.Generator().manual_seed(1)
    difficulty = 20 * torch.randn(400, generator=generator)
    return {z: mean + difficulty + noise * torch.randn(400, generator=generator) for z, mean in means.items()}


def test_claims_follow_the_stated_rule():
    per_image = synthetic_log_likelihoods({1: -130.0, 2: -110.0, 3: -100.0, 4: -95.0, 30: -90.0, 1000: -90.5})
    claims = latent_dim.judge_claims(sorted(per_image), per_image)
    assert claims["best_z"] == 30
    assert claims["fewer_than_4_noticeably_worse"]["confirmed"] is True
    assert claims["1000_good"]["confirmed"] is True  # 0.5 nat below the best is not noticeable
    assert claims["10000_degraded"]["confirmed"] is None  # not trained
    # z = 3 as good as z = 4, and z = 1000 2 nats below the best: both claims fail.
    per_image = synthetic_log_likelihoods(
        {1: -130.0, 3: -95.2, 4: -95.0, 30: -90.0, 1000: -92.0, 10000: -92.3}
    )
    claims = latent_dim.judge_claims(sorted(per_image), per_image)
    assert claims["fewer_than_4_noticeably_worse"]["confirmed"] is False
    assert [r["noticeably_worse"] for r in claims["fewer_than_4_noticeably_worse"]["comparisons"]] == [
        True,
        False,
    ]
    assert claims["1000_good"]["confirmed"] is False
    assert claims["10000_degraded"]["confirmed"] is False  # 0.3 nat is within the rule's 1 nat
    assert claims["10000_degraded"]["comparison"]["mean"] == pytest.approx(-0.3, abs=0.1)


def test_latent_dim_study(tmp_path):
    out = tmp_path / "latent_dim"
    flags = ["--z-dims", "1", "4", "64", "--epochs", "1", "--subset", "500", "--hidden", "32"]
    results = latent_dim.main(
        [*flags, "--eval-subset", "30", "-k", "8", "--device", "cpu", "--no-progress", "--out", str(out)]
    )
    assert json.loads((out / "latent_dim.json").read_text())["z_dims"] == [1, 4, 64]
    for name in ("latent_dim.png", "elbo_curves.png", "samples_by_z.png"):
        assert (out / name).stat().st_size > 5_000, name
    assert results["budget"]["eval_images"] == 30 and results["budget"]["activity_images"] == 10_000
    for row in results["models"]:
        assert 0 <= row["active_units"] <= row["z_dim"]
        assert row["log_likelihood"]["mean"] >= row["elbo"]["mean"]
        # both over all 10,000 test images: a part of the units' KL is at most all of it
        assert 0 <= row["kl_of_inactive_units"] <= row["rate_all_images"] * (1 + 1e-12)
        assert row["chunk_size"] == latent_dim.chunk_size_for(row["z_dim"])
    best = results["claims"]["best_z"]
    assert next(r for r in results["models"] if r["z_dim"] == best)["log_likelihood_minus_best"]["mean"] == 0
    claim = results["claims"]["fewer_than_4_noticeably_worse"]
    (row,) = claim["comparisons"]  # z = 1 against z = 4, by the stated rule
    assert row["noticeably_worse"] == (row["mean"] < -1.0 and row["mean"] < -3.0 * row["se"])
    assert claim["confirmed"] == row["noticeably_worse"]
    assert results["claims"]["1000_good"]["confirmed"] is None


@pytest.mark.parametrize(
    "flags",
    [
        ["--z-dims", "0", "2"],
        ["--epochs", "0"],
        ["-k", "0"],
        ["--subset", "0"],
        ["--batch-size", "0"],
        ["--lr", "0"],
    ],
)
def test_latent_dim_refuses_bad_input(tmp_path, capsys, flags):
    assert run_study(latent_dim.main, ["--out", str(tmp_path), *flags]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_judge_claims_applies_its_rule_to_known_differences():
    """Per-image values built so that each paired difference is known: z = 1 is 5 nats worse than
    z = 4 on every image (noticeably), z = 2 only 0.5 (not: under 1 nat), z = 3 10 nats worse on
    average but so noisy that it is within 3 paired standard errors (not)."""
    base = torch.linspace(-100.0, -80.0, 50, dtype=torch.float64)
    noise = torch.tensor([60.0, -60.0] * 25, dtype=torch.float64)
    per_image = {4: base, 1: base - 5.0, 2: base - 0.5, 3: base - 10.0 + noise}
    claims = latent_dim.judge_claims([1, 2, 3, 4], per_image)
    verdicts = {r["z"]: r["noticeably_worse"] for r in claims["fewer_than_4_noticeably_worse"]["comparisons"]}
    assert verdicts == {1: True, 2: False, 3: False}
    assert claims["fewer_than_4_noticeably_worse"]["confirmed"] is False and claims["best_z"] == 4
    per_image.update({2: base - 2.0, 3: base - 3.0})
    assert (
        latent_dim.judge_claims([1, 2, 3, 4], per_image)["fewer_than_4_noticeably_worse"]["confirmed"] is True
    )

"""The ring of Fig. 2: g(z) = z/10 + z/||z|| on known points, and the study against closed forms."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

from analysis import ring
from analysis.common import run_study


def test_ring_map_on_known_points():
    z = np.array([[3.0, 4.0], [-0.6, 0.8], [0.0, -2.0]])
    # ||z|| = 5, 1, 2: g = z/10 + z/||z||
    expected = np.array([[0.3 + 0.6, 0.4 + 0.8], [-0.06 - 0.6, 0.08 + 0.8], [0.0, -0.2 - 1.0]])
    assert np.allclose(ring.ring_map(z), expected, atol=1e-15)
    assert np.allclose(ring.ring_map(-z), -ring.ring_map(z))


def test_closed_forms_agree_with_scipy_rayleigh():
    # ||z|| of a 2D standard normal is Rayleigh(1); ||g(z)|| = 1 + ||z|| / 10.
    assert ring.radius_mean() == pytest.approx(1 + stats.rayleigh.mean() / 10, rel=1e-12)
    assert ring.radius_sd() == pytest.approx(stats.rayleigh.std() / 10, rel=1e-12)
    total, _ = integrate.quad(ring.radius_density, 1.0, 3.0)
    mean, _ = integrate.quad(lambda r: r * ring.radius_density(r), 1.0, 3.0)
    assert total == pytest.approx(1.0, abs=1e-9)
    assert mean == pytest.approx(ring.radius_mean(), abs=1e-9)


def test_ring_study_matches_its_closed_forms(tmp_path):
    out = tmp_path / "ring"
    results = ring.main(["--out", str(out), "--num-points", "20000", "--seed", "3"])
    on_disk = json.loads((out / "ring.json").read_text())
    assert on_disk["radius_mean"] == results["radius_mean"]
    assert (out / "ring.png").stat().st_size > 10_000 and (out / "ring_radius.png").exists()
    assert results["num_points"] == 20000
    # Measured against closed form, within 4 standard errors (a 1-in-15,000 false alarm).
    assert abs(results["radius_mean"] - ring.radius_mean()) < 4 * results["radius_mean_se"]
    assert abs(results["radius_sd"] - ring.radius_sd()) < 4 * results["radius_sd_se"]
    assert results["radius_mean_se"] == pytest.approx(ring.radius_sd() / math.sqrt(20000), rel=0.05)
    # g only rescales: radius 1 + ||z||/10 and unchanged angle, to rounding.
    assert results["max_abs_radius_identity_error"] < 1e-12
    assert results["max_abs_angle_change"] < 1e-12
    assert results["radius_min"] > 1.0
    assert results["angle_rayleigh_pvalue"] > 1e-4 and results["z_norm_ks_pvalue_rayleigh"] > 1e-4


def test_ring_refuses_too_few_points(tmp_path, capsys):
    assert run_study(ring.main, ["--out", str(tmp_path), "--num-points", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--num-points" in err

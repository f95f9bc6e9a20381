"""The inference-gap study on a tiny run: the split adds up, q* is no worse than q, refit works."""

from __future__ import annotations

import json

import pytest
import torch

from analysis import inference_gap
from pyro_vae import load_run


def test_the_gaps_add_up_to_the_total_image_by_image(tiny_vae_run):
    _, model = load_run(tiny_vae_run)
    (images,) = inference_gap.load_eval_data(load_run(tiny_vae_run)[0], "test", subset=12)
    per_image = inference_gap.split_gap(
        model, images, num_samples=64, batch_size=6, seed=0, optimizer_options={"max_steps": 200}
    )
    total = per_image["log_likelihood"] - per_image["elbo_amortized"]
    assert torch.allclose(per_image["approximation_gap"] + per_image["amortization_gap"], total)
    # q* starts at the amortized lambda and only improves; the pooled log p-hat bounds both ELBOs.
    assert (per_image["amortization_gap"] > -0.5).all() and per_image["amortization_gap"].mean() > 0
    assert (per_image["approximation_gap"] > 0).all()


def test_study_writes_rows_with_standard_errors_and_refits_a_flow(tiny_vae_run, tmp_path):
    out = tmp_path / "gap"
    results = inference_gap.main(
        [str(tiny_vae_run), "--refit", "iaf", "--refit-epochs", "1", "--num-images", "8", "-k", "32",
         "--batch-size", "8", "--max-steps", "100", "--out", str(out), "--device", "cpu", "--no-progress"]
    )  # fmt: skip
    rows = json.loads((out / "inference_gap.json").read_text())["rows"]
    assert [row["guide"] for row in rows] == ["gaussian", "iaf"] == [r["guide"] for r in results["rows"]]
    for row in rows:
        for key in inference_gap.QUANTITIES:
            assert row[f"{key}_se"] >= 0
        assert row["total_gap"] == pytest.approx(row["log_likelihood"] - row["elbo_amortized"])
        assert row["num_images"] == 8 and row["num_samples"] == 32
    assert (out / "inference_gap.png").is_file() and (out / "refit-iaf" / "checkpoint.pt").is_file()
    refit_config, refit = load_run(out / "refit-iaf")
    _, source = load_run(tiny_vae_run)
    assert refit_config.model.guide == "iaf"
    for name, value in source.decoder.state_dict().items():
        assert torch.equal(refit.decoder.state_dict()[name], value), name  # the decoder stayed frozen

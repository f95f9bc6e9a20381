"""The CVAE and the regressor of sections 3 and 5: contracts, the task's data, learning, the CLI."""

from __future__ import annotations

import json
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.optim import Adam

from pyro_vae import estimators
from pyro_vae.builders import CVAEConfig, RunConfig, TrainConfig, build_cvae, build_regressor
from pyro_vae.cli import main as cli_main
from pyro_vae.data import column_mask, load_mnist, merge_column, split_column
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.runs import TASKS, load_eval_data, train_run

SMALL = CVAEConfig(z_dim=4, hidden_sizes=(64,), condition_sizes=(32,), condition_dim=16)


def latent_sites(trace):
    return {
        n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"
    }


def test_model_and_guide_sites_match_with_and_without_y():
    cvae = build_cvae(SMALL)
    x, y = torch.bernoulli(torch.rand(5, 28)), torch.bernoulli(torch.rand(5, 756))
    guide_trace = poutine.trace(cvae.guide).get_trace(x, y)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x, y)
    assert latent_sites(guide_trace) == latent_sites(model_trace) == {"z"}
    assert model_trace.nodes["y"]["is_observed"] and model_trace.nodes["y"]["value"].shape == (5, 756)
    # without y the guide samples z from the prior and the model samples y
    guide_trace = poutine.trace(cvae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(cvae.model, trace=guide_trace)).get_trace(x)
    assert latent_sites(guide_trace) == {"z"} and latent_sites(model_trace) == {"z", "y"}
    assert model_trace.nodes["y"]["value"].shape == (5, 756)


@pytest.mark.parametrize("prior", ["standard", "conditional"])
def test_predictive_draws_completions(prior):
    cvae = build_cvae(CVAEConfig(**{**SMALL.to_dict(), "prior": prior}))
    x = torch.bernoulli(torch.rand(6, 28))
    draws = Predictive(cvae.model, guide=cvae.guide, num_samples=3)(x)
    assert draws["y"].shape == (3, 6, 756) and draws["z"].shape == (3, 6, 4)
    assert set(draws["y"].unique().tolist()) <= {0.0, 1.0}
    assert cvae.complete(x, 2).shape == (2, 6, 756)
    svi = SVI(cvae.model, cvae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    assert math.isfinite(svi.step(x, torch.bernoulli(torch.rand(6, 756))))


def test_column_split_is_the_middle_column_and_invertible():
    images = load_mnist("test", subset=4).images
    x, y = split_column(images)
    assert x.shape == (4, 28) and y.shape == (4, 756)
    assert torch.equal(x, images.reshape(4, 28, 28)[:, :, 13])
    assert torch.equal(merge_column(x, y), images)
    assert int(column_mask(0).sum()) == 28
    with pytest.raises(DataError, match="column index 28 is out of range"):
        column_mask(28)
    with pytest.raises(ConfigError, match="out of range"):
        CVAEConfig(column=-1)


def test_input_column_is_binarized_afresh_each_time_with_the_right_marginal():
    config = RunConfig(kind="cvae", model=SMALL)
    transform = TASKS["cvae"].batch_transform(config, build_cvae(SMALL).likelihood)
    image = load_mnist("test", subset=1).images
    draws = torch.stack([transform(image)[0][0] for _ in range(4000)])  # (4000, 28)
    assert not torch.equal(draws[0], draws[1]) or not torch.equal(draws[1], draws[2])
    intensity = split_column(image)[0][0]
    standard_error = (intensity * (1 - intensity) / 4000).sqrt()
    assert torch.all((draws.mean(0) - intensity).abs() <= 4 * standard_error + 1e-9)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}


def test_importance_sampled_log_likelihood_is_at_least_the_elbo_on_average():
    torch.manual_seed(0)
    cvae = build_cvae(SMALL)
    x, y = load_eval_data(RunConfig(kind="cvae", model=SMALL), "test", subset=50)
    elbo = estimators.elbo(cvae.model, cvae.guide, x, y, num_samples=20)  # independent draws, less noise
    log_lik = estimators.log_likelihood(cvae.model, cvae.guide, x, y, num_samples=200)
    difference = log_lik - elbo
    assert float(difference.mean()) > 3 * float(difference.std() / math.sqrt(50))


def test_regressor_likelihood_is_exact_for_any_k():
    regressor = build_regressor(SMALL)
    x, y = torch.bernoulli(torch.rand(7, 28)), torch.bernoulli(torch.rand(7, 756))
    exact = regressor.decoder(regressor.condition_net(x)).log_prob(y)
    for k in (1, 5):
        log_w = estimators.log_weights(regressor.model, regressor.guide, x, y, num_samples=k)
        assert torch.allclose(log_w, exact.detach().expand(k, 7))


def test_short_training_improves_both_models(tmp_path):
    train = TrainConfig(epochs=3, subset=2000, lr=2e-3)
    for kind, build in (("cvae", SMALL), ("regressor", SMALL)):
        _, history = train_run(
            RunConfig(kind=kind, model=build, train=train),
            tmp_path / kind,
            device="cpu",
            progress=False,
            log=None,
        )
        assert history.valid_elbo[-1] > history.valid_elbo[0] + 5, kind
        assert {"samples.png", "reconstructions.png", "elbo.png"} <= {
            p.name for p in (tmp_path / kind).iterdir()
        }
        pyro.clear_param_store()


def test_cli_trains_completes_and_refuses_wrong_kinds(tmp_path, tiny_vae_run, capsys):
    flags = ["--epochs", "1", "--subset", "300", "--hidden", "32", "--device", "cpu", "--no-progress"]
    assert (
        cli_main(
            ["train", "cvae", *flags, "--z-dim", "3", "--prior", "conditional", "--out", str(tmp_path / "c")]
        )
        == 0
    )
    assert cli_main(["train", "regressor", *flags, "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model"]["prior"] == "conditional"
    assert cli_main(["complete", str(tmp_path / "c"), "-s", "2", "--num-digits", "3", "--device", "cpu"]) == 0
    assert (tmp_path / "c" / "completions.png").exists()
    assert cli_main(["complete", str(tmp_path / "r"), "--device", "cpu"]) == 0
    assert (
        cli_main(
            ["evaluate", str(tmp_path / "r"), "-k", "2", "--subset", "20", "--device", "cpu", "--no-progress"]
        )
        == 0
    )
    capsys.readouterr()
    assert cli_main(["complete", str(tiny_vae_run)]) == 2
    assert "holds a 'vae' run; this needs a cvae or regressor run" in capsys.readouterr().err
    assert cli_main(["train", "vae", "--epochs", "2", "--out", str(tmp_path / "c"), "--resume"]) == 2
    assert "resume it with 'pyro-vae train cvae'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        cli_main(["train", "cvae", "--column", "28"])
    assert exit_.value.code == 2
    assert "column index 28 is out of range" in capsys.readouterr().err


def test_cvae_vs_regressor_study(tiny_completion_runs, tmp_path, tiny_vae_run):
    from analysis import cvae_vs_regressor

    cvae_dir, regressor_dir = tiny_completion_runs
    out = tmp_path / "study"
    results = cvae_vs_regressor.main(
        [
            "--cvae",
            str(cvae_dir),
            "--regressor",
            str(regressor_dir),
            "-k",
            "32",
            "--subset",
            "60",
            "--diversity-samples",
            "4",
            "--classifier-epochs",
            "1",
            "--classifier-subset",
            "2000",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--no-progress",
        ]
    )
    for name in ("cvae_vs_regressor.json", "figure8.png", "likelihoods.png"):
        assert (out / name).stat().st_size > 0
    lik = results["likelihoods"]
    assert lik["num_images"] == 60
    assert lik["cvae_log_likelihood"]["mean"] >= lik["cvae_elbo"]["mean"]
    assert lik["cvae_minus_regressor"]["mean"] == pytest.approx(
        lik["cvae_log_likelihood"]["mean"] - lik["regressor_log_likelihood"]["mean"], abs=1e-6
    )
    comp = results["completions"]
    assert comp["diversity"]["cvae"] > 0 and comp["diversity"]["regressor"] == 0
    assert 0 <= comp["sharpness"]["regressor"] <= 0.5
    assert comp["classifier"]["test_accuracy_grayscale"] > 0.6  # one epoch on 2,000 images; chance is 0.1
    # the wrong kind of run is refused with a one-line error
    with pytest.raises(ConfigError, match="holds a 'vae' run"):
        cvae_vs_regressor.main(
            [
                "--cvae",
                str(tiny_vae_run),
                "--regressor",
                str(regressor_dir),
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )

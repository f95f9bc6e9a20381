"""The recipe's pieces: learning-rate schedules, KL warm-up, early stopping, output-bias start,
activations, the Eq. 10 default, and exact resume with all of them (their flags: test_cli.py)."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch.distributions import kl_divergence

from pyro_vae import TrainConfig, VAEConfig, build_vae, train
from pyro_vae.builders import build_objective
from pyro_vae.checkpoint import load_checkpoint
from pyro_vae.data import binarize
from pyro_vae.errors import ConfigError
from pyro_vae.schedules import (
    IWAE_SCHEDULE_EPOCHS,
    CosineFactor,
    ScaleLatentSites,
    iwae_lr_factor,
    iwae_stage,
    kl_weight,
    should_stop_early,
)
from pyro_vae.train import kl_forms

TINY = VAEConfig(z_dim=3, hidden_sizes=(32,))


def quiet_train(vae, images, valid, **options):
    return train(vae, (images,), (valid,), batch_transform=lambda x: (binarize(x),), progress=False,
                 log=None, **options)  # fmt: skip


def test_iwae_schedule_matches_burda_et_al():
    """Stage i lasts 3^i epochs at 10^(-i/7) (Burda et al., 2016, section 5): 3,280 epochs."""
    stages = [iwae_stage(e) for e in range(IWAE_SCHEDULE_EPOCHS)]
    assert IWAE_SCHEDULE_EPOCHS == 3280
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert stages == sorted(stages)
    assert iwae_lr_factor(0) == 1.0
    assert iwae_lr_factor(1) == pytest.approx(10 ** (-1 / 7))
    assert iwae_lr_factor(IWAE_SCHEDULE_EPOCHS - 1) == pytest.approx(0.1)
    assert iwae_lr_factor(10**5) == pytest.approx(0.1)  # the last stage's rate holds


def test_cosine_and_warmup_values():
    cosine = CosineFactor(10)
    assert [cosine(e) for e in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert [kl_weight(s, 10, 2) for s in (0, 5, 10, 20, 100)] == pytest.approx([0, 0.25, 0.5, 1, 1])
    assert kl_weight(0, 10, 0) == 1.0


def test_early_stopping_rule():
    assert not should_stop_early([-3.0, -2.0, -2.5], patience=2)
    assert should_stop_early([-3.0, -2.0, -2.5, -2.1], patience=2)
    assert not should_stop_early([-3.0, -2.0, -2.5, -2.1], patience=None)


def test_training_follows_the_schedule_in_its_history(small_train_images, small_valid_binary):
    vae = build_vae(TINY)
    history = quiet_train(
        vae, small_train_images[:200], small_valid_binary[:50], epochs=5, lr=2e-3, lr_schedule="iwae"
    )
    assert history.learning_rate == pytest.approx([2e-3 * iwae_lr_factor(e) for e in range(5)])
    step = quiet_train(build_vae(TINY), small_train_images[:200], small_valid_binary[:50], epochs=5, lr=2e-3,
                       lr_schedule="step", lr_milestones=(2, 4), lr_decay=0.5)  # fmt: skip
    assert step.learning_rate == pytest.approx([2e-3, 2e-3, 1e-3, 1e-3, 5e-4])


def test_kl_weight_scales_exactly_the_kl_term():
    """With the same draw of z, -loss(beta) = E log p(x|z) - beta KL: linear in beta, and the slope is
    the closed-form KL(Q(z|X) || P(z)) of Eq. 7, summed over the batch."""
    vae = build_vae(TINY)
    x = binarize(torch.rand(8, 784), torch.Generator().manual_seed(0))
    objective = build_objective("meanfield")

    def loss(beta):
        pyro.set_rng_seed(1)
        with ScaleLatentSites(beta):
            return float(objective.differentiable_loss(vae.model, vae.guide, x).detach())

    with torch.no_grad():
        kl = float(kl_divergence(vae.encoder(x), vae.prior()).sum())
    assert kl > 1e-3
    assert loss(1.0) - loss(0.0) == pytest.approx(kl, rel=1e-4)
    assert loss(0.5) == pytest.approx((loss(0.0) + loss(1.0)) / 2, rel=1e-5)


def test_eq10_default_uses_the_closed_form_kl_and_falls_back_where_none_exists():
    x = torch.zeros(2, 784)
    assert TrainConfig().objective == "meanfield"
    assert kl_forms(build_vae(TINY), x) == {"z": "in closed form"}
    mixture = build_vae(VAEConfig(z_dim=3, hidden_sizes=(32,), prior="mixture", num_components=3))
    assert kl_forms(mixture, x) == {"z": "sampled"}
    # the fallback is Pyro's: the sampled term log q(z) - log p(z) of the mixture prior
    objective = build_objective("meanfield")
    pyro.set_rng_seed(0)
    mean_field = objective.differentiable_loss(mixture.model, mixture.guide, x)
    pyro.set_rng_seed(0)
    sampled = build_objective("trace").differentiable_loss(mixture.model, mixture.guide, x)
    assert float(mean_field.detach()) == pytest.approx(float(sampled.detach()), rel=1e-5)


def test_eq10_gives_the_same_encoder_gradient_with_lower_variance():
    """Eq. 10's closed-form KL and the sampled KL have the same expected gradient; the closed form's
    is less noisy (its KL part has no Monte Carlo noise at all). With the same seed both see the same
    z, so their difference d is the sampled KL's gradient noise: E[d] = 0, checked as
    ||mean d||^2 against its expectation sum(var d) / n (a ratio near 1; 3 leaves room)."""
    vae = build_vae(TINY)
    x = binarize(torch.rand(16, 784), torch.Generator().manual_seed(0))
    gradients = {}
    for name in ("meanfield", "trace"):
        objective, draws = build_objective(name), []
        for seed in range(200):
            pyro.set_rng_seed(seed)
            vae.zero_grad()
            objective.differentiable_loss(vae.model, vae.guide, x).backward()
            draws.append(torch.cat([p.grad.flatten() for p in vae.encoder.parameters()]))
        gradients[name] = torch.stack(draws)  # (200, num_encoder_parameters)
    difference = gradients["meanfield"] - gradients["trace"]
    n = difference.shape[0]
    assert float(difference.mean(0).square().sum()) < 3 * float(difference.var(0).sum()) / n
    assert float(gradients["meanfield"].var(0).sum()) < 0.8 * float(gradients["trace"].var(0).sum())


def test_output_bias_starts_at_the_logit_of_the_mean(small_train_images):
    vae = build_vae(TINY)
    mean = small_train_images.mean(0)
    assert vae.decoder.init_output_bias(mean)
    expected = torch.logit(mean.clamp(1e-3, 1 - 1e-3))
    assert torch.allclose(vae.decoder.body[-1].bias, expected)
    with torch.no_grad():  # with zero last-layer weights the decoder predicts the mean image
        vae.decoder.body[-1].weight.zero_()
        assert torch.allclose(vae.decoder(torch.zeros(1, 3)).mean[0], mean.clamp(1e-3, 1 - 1e-3), atol=1e-6)
    continuous = build_vae(VAEConfig(z_dim=3, hidden_sizes=(32,), likelihood="continuous-bernoulli"))
    assert not continuous.decoder.init_output_bias(mean)


def test_activation_choice():
    tanh = build_vae(VAEConfig(z_dim=3, hidden_sizes=(32, 16), activation="tanh"))
    assert sum(isinstance(m, torch.nn.Tanh) for m in tanh.modules()) == 4
    assert not any(isinstance(m, torch.nn.ReLU) for m in tanh.modules())
    with pytest.raises(ConfigError, match="activation"):
        VAEConfig(activation="sigmoid")


@pytest.mark.parametrize(
    "options",
    [
        {"lr_schedule": "plateau", "kl_warmup": 1.5, "patience": 3},
        {"lr_schedule": "iwae", "objective": "iwae", "num_particles": 3},
        {"objective": "iwae-dreg", "num_particles": 4, "kl_warmup": 1},
        {"lr_schedule": "cosine", "adam_betas": (0.8, 0.99), "adam_eps": 1e-4},
    ],
)
def test_resume_is_exact_with_schedules(tmp_path, small_train_images, small_valid_binary, options):
    """3 epochs straight == interrupted after epoch 1 + resume, bit for bit: schedule and warm-up too."""
    images, valid = small_train_images[:300], small_valid_binary[:100]
    settings = TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=3, **options)
    torch.manual_seed(0)
    straight = build_vae(TINY)
    quiet_train(straight, images, valid, settings=settings, run_dir=tmp_path / "a")
    torch.manual_seed(0)
    first = build_vae(TINY)

    def interrupt_after_epoch_one(line):  # called after the epoch's checkpoint is written
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(first, (images,), (valid,), settings, batch_transform=lambda x: (binarize(x),), progress=False,
              run_dir=tmp_path / "b", log=interrupt_after_epoch_one)  # fmt: skip
    assert load_checkpoint(tmp_path / "b")["epoch"] == 1
    resumed = build_vae(TINY)
    quiet_train(resumed, images, valid, settings=settings, run_dir=tmp_path / "b", resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["history"]["learning_rate"] == b["history"]["learning_rate"]
    assert a["history"]["valid_elbo"] == b["history"]["valid_elbo"]


def test_early_stopping_stops_and_stays_stopped(tmp_path, small_train_images, small_valid_binary):
    """A learning rate far too small for 2 of 3 datapoints... instead: a valid ELBO that cannot improve.

    With lr tiny the validation ELBO changes by noise only; patience 1 stops as soon as one epoch
    fails to beat the best, and a resumed run with more epochs does not train further.
    """
    images, valid = small_train_images[:100], small_valid_binary[:50]
    vae = build_vae(TINY)
    history = quiet_train(vae, images, valid, epochs=30, lr=1e-9, patience=1, run_dir=tmp_path)
    assert history.epochs < 30
    assert history.best_epoch == history.epochs - 1  # the last epoch was the first one without progress
    again = quiet_train(build_vae(TINY), images, valid, epochs=40, lr=1e-9, patience=1, run_dir=tmp_path,
                        resume=True)  # fmt: skip
    assert again.epochs == history.epochs


def test_jit_objectives_refuse_kl_warmup(small_train_images, small_valid_binary):
    with pytest.raises(ConfigError, match="KL weight"):
        quiet_train(build_vae(TINY), small_train_images[:100], small_valid_binary[:50], epochs=1,
                    objective="jit-meanfield", kl_warmup=1)  # fmt: skip


def test_bad_train_settings_are_refused():
    for bad, match in [
        ({"num_particles": 0}, "num_particles"),
        ({"lr_schedule": "linear"}, "schedule"),
        ({"adam_betas": (0.9, 1.0)}, "adam_betas"),
        ({"kl_warmup": -1}, "kl_warmup"),
        ({"objective": "elbo"}, "objective"),
        ({"patience": 0}, "patience"),
        ({"lr_schedule": "step", "lr_milestones": (3, 2)}, "lr_milestones"),
        ({"lr_milestones": (3,)}, "step schedule"),
        ({"lr_schedule": "step", "lr_decay": 0}, "lr_decay"),
    ]:
        with pytest.raises(ConfigError, match=match):
            TrainConfig(**bad)

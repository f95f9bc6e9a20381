r"""The best guide of a family for each datapoint, q*, and the split of the ELBO's gap it gives.

For a VAE whose guide network is amortized through local parameters (:mod:`pyro_vae.guides`),
q_lambda(z) = ``encoder.distribution(lambda)``, the amortized guide uses lambda = lambda(x) and the
per-datapoint optimum is

.. math::  q^*_x = q_{\lambda^*(x)}, \qquad \lambda^*(x) = \arg\max_\lambda \mathcal{L}[q_\lambda](x),
           \qquad \mathcal{L}[q](x) = E_{q}[\log p(x, z) - \log q(z)],

with the decoder and prior fixed. Cremer, Li & Duvenaud (2018, "Inference Suboptimality in
Variational Autoencoders", Eq. 3-4) split the gap of the tutorial's Eq. 5 into

.. math::  \log p(x) - \mathcal{L}[q] = \underbrace{\log p(x) - \mathcal{L}[q^*]}_{\text{approximation}}
           + \underbrace{\mathcal{L}[q^*] - \mathcal{L}[q]}_{\text{amortization}}.

:func:`optimize_local_parameters` finds lambda* for a batch of datapoints at once: the batch's
ELBO is a sum of per-datapoint terms, each depending on its own lambda only, so one Adam over the
``(B, P)`` tensor is B independent optimizations. It starts at the amortized lambda(x), measures
the batch's mean ELBO with a larger sample every ``check_every`` steps, divides the step size by
10 when that mean has not improved by more than ``tolerance`` nats per datapoint for ``patience``
checks (the stochastic gradient's noise sets a floor proportional to the step size), and stops at
the next such plateau after ``lr_decays`` divisions. (A per-datapoint rule never stops a large
batch: among 100 noisy checks one always seems to improve.) It returns the last iterate:
after the small final steps it sits closer to the optimum than the best-looking check, whose
noise would favour lucky draws.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import pyro.infer
import torch
from torch import nn

from . import estimators


def local_guide(model: nn.Module, params: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A guide program ``guide(x)`` that draws z from ``model.encoder.distribution(params)``.

    It mirrors ``model.guide`` (same ``"data"`` plate and ``"z"`` site) with lambda given instead
    of computed from x, so every estimator and objective takes it unchanged.
    """

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", model.encoder.distribution(params))

    return guide


@dataclass(frozen=True)
class LocalOptimum:
    """The per-datapoint optimum: ``params`` ``(B, P)``, a ``check_samples`` ELBO of it ``(B,)``, steps."""

    params: torch.Tensor
    elbo: torch.Tensor
    steps: int


def _check_elbo(model: nn.Module, x: torch.Tensor, params: torch.Tensor, num_samples: int) -> torch.Tensor:
    terms = estimators.log_weight_terms(model.model, local_guide(model, params), x, num_samples=num_samples)
    return terms.log_weights.mean(0)  # (B,)


def optimize_local_parameters(
    model: nn.Module,
    x: torch.Tensor,
    *,
    num_particles: int = 10,
    lr: float = 1e-2,
    lr_decays: int = 2,
    max_steps: int = 5000,
    check_every: int = 50,
    check_samples: int = 200,
    patience: int = 4,
    tolerance: float = 0.01,
    seed: int = 0,
) -> LocalOptimum:
    r"""lambda*(x) for every datapoint of ``x`` with the decoder and prior fixed (see the module).

    Parameters
    ----------
    model : nn.Module
        A VAE (``model``/``guide`` programs) whose ``encoder`` has ``local_parameters`` and
        ``distribution`` (:mod:`pyro_vae.guides`).
    x : Tensor
        ``(B, x_dim)`` datapoints, as the model scores them.
    num_particles : int
        z draws per datapoint and step for the reparameterized ELBO gradient (Eq. 10: the KL in
        closed form where the family and prior have one).
    lr, lr_decays, max_steps : float, int, int
        Adam's initial step size on lambda, how many times it is divided by 10, the most steps.
    check_every, check_samples, patience, tolerance : int, int, int, float
        Every ``check_every`` steps the batch's mean ELBO is measured with ``check_samples`` draws
        per datapoint; after ``patience`` checks without beating the best by ``tolerance`` nats,
        the step size drops (or, after ``lr_decays`` drops, optimization stops).
    seed : int
        Seeds the draws, so that a rerun gives the same lambda*.

    Returns
    -------
    LocalOptimum
        lambda* of each datapoint, a quick ELBO of it (report a larger-sample one, e.g. from
        :func:`score_guide`) and the number of steps taken.
    """
    was_training = model.training
    model.eval()
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            torch.manual_seed(seed)
            with torch.no_grad():
                params = model.encoder.local_parameters(x).clone()
            best_elbo = float(_check_elbo(model, x, params, check_samples).mean())
            params.requires_grad_(True)
            optimizer = torch.optim.Adam([params], lr=lr)
            objective = pyro.infer.TraceMeanField_ELBO(
                num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1
            )
            guide = local_guide(model, params)
            checks_without_gain, step, decays = 0, 0, 0
            while step < max_steps:
                optimizer.zero_grad()
                # The loss is the negative sum over datapoints of each one's ELBO: its gradient
                # with respect to row b of params is datapoint b's alone.
                objective.differentiable_loss(model.model, guide, x).backward()
                optimizer.step()
                step += 1
                if step % check_every == 0:
                    elbo = float(_check_elbo(model, x, params.detach(), check_samples).mean())
                    better = elbo > best_elbo + tolerance
                    best_elbo = max(best_elbo, elbo)
                    checks_without_gain = 0 if better else checks_without_gain + 1
                    if checks_without_gain == patience:
                        if decays == lr_decays:
                            break
                        decays, checks_without_gain = decays + 1, 0
                        for group in optimizer.param_groups:
                            group["lr"] /= 10
    finally:
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
        model.train(was_training)
        last_elbo = _check_elbo(model, x, params.detach(), check_samples)
    return LocalOptimum(params=params.detach(), elbo=last_elbo, steps=step)


def score_guide(
    model: nn.Module, x: torch.Tensor, params: torch.Tensor | None = None, *, num_samples: int
) -> estimators.ImportanceSamplingSummary:
    """Per-datapoint ELBO, log p-hat and diagnostics with q_lambda as the proposal.

    ``params=None`` scores the amortized guide ``model.guide``; otherwise q with the given local
    parameters (for example lambda* of :func:`optimize_local_parameters`).
    """
    guide = model.guide if params is None else local_guide(model, params)
    terms = estimators.log_weight_terms(model.model, guide, x, num_samples=num_samples)
    return estimators.summarize_log_weights(terms, compute_khat=False)

r"""The true posterior P(z|X) by NUTS against the encoder's Q(z|X) (tutorial section 2.4.1).

The VAE's error term is KL(Q(z|X) || P(z|X)) (Eq. 5); the tutorial argues it can be small
because many decoders f fit the data and training prefers one whose posteriors are nearly
Gaussian. For a few test images this study samples P(z|X) proportional to P(X|z) P(z) with NUTS
(``pyro.infer.MCMC``, several independently initialised chains), stores the draws as arviz
``InferenceData`` (``posterior.nc``), reports R-hat and ESS, and compares with Q(z|X):

- means and standard deviations of every latent dimension (``moments.png``);
- pair plots of the most informative dimensions with Q's density overlaid (``pairs_image<i>.png``);
- KL(Q || P(z|X)) per image, estimated two ways:

  1. **IS gap**: log p-hat(x) - ELBO with z ~ Q (K particles), as in ``likelihood_gap``;
  2. **MCMC route**: KL = E_Q[log Q(z) - log P(X, z)] + log P(X), with log P(X) estimated by
     importance sampling from a multivariate Student-t fitted to the NUTS draws (a proposal that
     knows the true posterior's location, scale and correlations, independent of Q).

  and the closed-form KL between Q and a Gaussian fitted to the draws (exact only if P(z|X) is
  Gaussian).

    python -m analysis.posterior runs/quickstart --images 3 --chains 4 --out results/posterior
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from matplotlib.figure import Figure
from pyro.infer import MCMC, NUTS

from pyro_vae import estimators
from pyro_vae.guides import guide_covariance, guide_mean
from pyro_vae.runs import load_eval_data, load_vae_run
from pyro_vae.train import resolve_device, seed_everything
from pyro_vae.vae import VAE

from .common import check_at_least_one, cost_of, run_study, save_figure, study_parser, write_results

NAME = "posterior"
STUDENT_T_DOF = 5.0  # heavier tails than the posterior: a safe importance-sampling proposal


def _import_arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # arviz 0.x announces its 1.x refactor
        import arviz
    return arviz


def sample_posterior(
    vae: VAE, x: torch.Tensor, *, num_chains: int, num_samples: int, warmup_steps: int, progress: bool = False
) -> torch.Tensor:
    """NUTS draws from P(z|x) for one image ``x`` (``(x_dim,)``), shape ``(chains, draws, z_dim)``.

    Pyro's ``MCMC(NUTS(model), num_chains=...)`` on the VAE's own model program conditioned on
    ``x`` (the site ``"x"`` observed, the decoder and prior frozen), so the target is exactly the
    model's P(x|z) P(z). Each chain starts from its own draw of the prior, over-dispersed relative
    to the posterior, as R-hat needs. Pyro runs the chains in parallel processes where the machine
    has a spare core per chain, one after another otherwise.
    """
    was_training = vae.training
    frozen = [(p, p.requires_grad) for p in vae.parameters()]
    vae.eval()  # frozen networks: pyro.module leaves them out of the parameter store, silently
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        conditioned = poutine.condition(vae.model, data={"x": x.unsqueeze(0)})
        kernel = NUTS(conditioned, target_accept_prob=0.8, adapt_mass_matrix=True, max_plate_nesting=1)
        starts = vae.prior().sample((num_chains, 1))  # (chains, 1 image, z_dim)
        with warnings.catch_warnings():
            # With fewer spare cores than chains Pyro announces that it draws them in turn: expected.
            warnings.filterwarnings("ignore", message="num_chains=.* is more than available_cpu")
            mcmc = MCMC(
                kernel, num_samples=num_samples, warmup_steps=warmup_steps, num_chains=num_chains,
                initial_params={"z": starts if num_chains > 1 else starts[0]}, disable_progbar=not progress,
            )  # fmt: skip
            mcmc.run(x.unsqueeze(0))
    finally:
        for p, requires_grad in frozen:
            p.requires_grad_(requires_grad)
        vae.train(was_training)
    return mcmc.get_samples(group_by_chain=True)["z"][:, :, 0].detach()  # (chains, draws, z_dim)


def mcmc_log_likelihood(
    vae: VAE, x: torch.Tensor, draws: torch.Tensor, *, num_samples: int
) -> tuple[float, float]:
    """log P(x) by importance sampling from a Student-t fitted to the MCMC draws; (estimate, se)."""
    flat = draws.reshape(-1, draws.shape[-1]).double()
    loc = flat.mean(0)
    cov = torch.cov(flat.T) + 1e-6 * torch.eye(flat.shape[1], dtype=flat.dtype)
    # a Student-t with this scale matrix has covariance dof / (dof - 2) * scale
    scale_tril = torch.linalg.cholesky(cov * (STUDENT_T_DOF - 2) / STUDENT_T_DOF)
    proposal = dist.MultivariateStudentT(STUDENT_T_DOF, loc, scale_tril)
    z = proposal.sample((num_samples,))
    prior = vae.prior()
    with torch.no_grad():
        z32 = z.to(x.dtype)
        log_w = vae.decoder(z32).log_prob(x).double() + prior.log_prob(z32).double() - proposal.log_prob(z)
    log_w = log_w.unsqueeze(1)  # (K, 1)
    return float(estimators.log_mean_exp(log_w)), float(estimators.log_mean_exp_standard_error(log_w))


def gaussian_kl_q_to_fit(q: dist.Distribution, draws: torch.Tensor, *, num_samples: int = 4000) -> float:
    """KL(Q || N(mean, cov of the draws)): KL(Q || P(z|X)) if the posterior were Gaussian.

    In closed form for a Gaussian Q (diagonal or full covariance), by Monte Carlo over
    ``num_samples`` draws of Q for a flow. ``q`` is Q(z|x) of one image (batch shape ``(1,)``).
    """
    flat = draws.reshape(-1, draws.shape[-1]).double()
    fit = dist.MultivariateNormal(
        flat.mean(0), covariance_matrix=torch.cov(flat.T) + 1e-6 * torch.eye(flat.shape[1], dtype=flat.dtype)
    )
    if isinstance(q, dist.TransformedDistribution):
        with torch.no_grad():
            z = q.sample((num_samples,))[:, 0]  # (S, z_dim)
            return float((q.log_prob(z.unsqueeze(1))[:, 0].double() - fit.log_prob(z.double())).mean())
    loc, cov = guide_mean(q)[0].double(), guide_covariance(q)[0].double()
    return float(torch.distributions.kl_divergence(dist.MultivariateNormal(loc, covariance_matrix=cov), fit))


def compare_image(vae: VAE, x: torch.Tensor, draws: torch.Tensor, *, num_samples: int) -> dict[str, Any]:
    """Q against the NUTS draws for one image: moments and KL(Q || P(z|X)) three ways."""
    with torch.no_grad():
        q = vae.encoder(x.unsqueeze(0))
        q_loc = guide_mean(q, num_samples=num_samples)[0]
        q_scale = guide_covariance(q, num_samples=num_samples)[0].diagonal().sqrt()
    flat = draws.reshape(-1, draws.shape[-1])
    terms = estimators.log_weight_terms(vae.model, vae.guide, x.unsqueeze(0), num_samples=num_samples)
    log_w = terms.log_weights
    elbo = float(log_w.mean())
    elbo_se = float(log_w.std() / math.sqrt(num_samples))
    log_p_q = float(estimators.log_mean_exp(log_w)[0])
    log_p_mcmc, log_p_mcmc_se = mcmc_log_likelihood(vae, x, draws, num_samples=num_samples)
    return {
        "q_mean": q_loc.tolist(),
        "q_sd": q_scale.tolist(),
        "mcmc_mean": flat.mean(0).tolist(),
        "mcmc_sd": flat.std(0).tolist(),
        "elbo": elbo,
        "log_likelihood_q": log_p_q,
        "log_likelihood_q_se": float(estimators.log_mean_exp_standard_error(log_w)[0]),
        "log_likelihood_mcmc": log_p_mcmc,
        "log_likelihood_mcmc_se": log_p_mcmc_se,
        "kl_is_gap": log_p_q - elbo,
        # E_Q[log Q - log P(X, z)] = -ELBO, so KL(Q || P(z|X)) = log P(X) - ELBO with the MCMC-based log P(X)
        "kl_mcmc": log_p_mcmc - elbo,
        "kl_mcmc_se": math.hypot(log_p_mcmc_se, elbo_se),
        "kl_gaussian_fit": gaussian_kl_q_to_fit(q, draws),
        "khat_q": float(estimators.pareto_khat(log_w)[0]),
    }


def to_inference_data(draws: list[torch.Tensor], image_indices: list[int]):
    """arviz ``InferenceData`` with ``z`` of dims (chain, draw, image, latent)."""
    arviz = _import_arviz()
    z = torch.stack(draws, dim=2).numpy()  # (chain, draw, image, latent)
    return arviz.from_dict(
        posterior={"z": z},
        coords={"image": image_indices, "latent": list(range(z.shape[-1]))},
        dims={"z": ["image", "latent"]},
    )


def diagnostics(idata) -> dict[str, Any]:
    """Split R-hat and bulk ESS of every (image, latent) pair, summarized per image."""
    arviz = _import_arviz()
    rhat = arviz.rhat(idata)["z"].values  # (image, latent)
    ess = arviz.ess(idata, method="bulk")["z"].values
    return {
        "rhat_max": rhat.max(axis=1).tolist(),
        "ess_bulk_min": ess.min(axis=1).tolist(),
        "rhat": rhat.tolist(),
        "ess_bulk": ess.tolist(),
    }


def plot_moments(path: Path, comparisons: list[dict[str, Any]]) -> None:
    fig = Figure(figsize=(9, 4))
    left, right = fig.subplots(1, 2)
    for i, c in enumerate(comparisons):
        left.scatter(c["mcmc_mean"], c["q_mean"], s=10, label=f"image {i}")
        right.scatter(c["mcmc_sd"], c["q_sd"], s=10)
    for ax, what in ((left, "mean"), (right, "standard deviation")):
        lo, hi = ax.get_xlim()
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xlabel(f"posterior {what} (NUTS)")
        ax.set_ylabel(f"Q(z|X) {what}")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set_title("points below the diagonal: Q is narrower than P(z|X)", fontsize=9)
    save_figure(fig, path)


def plot_pairs(path: Path, draws: torch.Tensor, comparison: dict[str, Any], dims: list[int]) -> None:
    """Pair plot of NUTS draws with Q's marginal densities and 1- and 2-sd ellipses overlaid."""
    flat = draws.reshape(-1, draws.shape[-1]).numpy()
    q_mean, q_sd = np.array(comparison["q_mean"]), np.array(comparison["q_sd"])
    n = len(dims)
    fig = Figure(figsize=(2.3 * n, 2.3 * n))
    axes = fig.subplots(n, n, squeeze=False)
    angle = np.linspace(0, 2 * np.pi, 100)
    for r, dr in enumerate(dims):
        for c, dc in enumerate(dims):
            ax = axes[r][c]
            if r == c:
                ax.hist(flat[:, dr], bins=40, density=True, color="C0", alpha=0.6)
                grid = np.linspace(flat[:, dr].min(), flat[:, dr].max(), 200)
                density = np.exp(-0.5 * ((grid - q_mean[dr]) / q_sd[dr]) ** 2) / (
                    q_sd[dr] * math.sqrt(2 * math.pi)
                )
                ax.plot(grid, density, color="C3")
            elif r > c:
                ax.scatter(flat[:, dc], flat[:, dr], s=1, alpha=0.2, color="C0")
                for radius in (1, 2):
                    ax.plot(
                        q_mean[dc] + radius * q_sd[dc] * np.cos(angle),
                        q_mean[dr] + radius * q_sd[dr] * np.sin(angle),
                        color="C3",
                        lw=0.8,
                    )
            else:
                ax.set_axis_off()
            if r == n - 1:
                ax.set_xlabel(f"z[{dc}]")
            if c == 0 and r > 0:
                ax.set_ylabel(f"z[{dr}]")
    fig.suptitle("NUTS draws of P(z|X) (blue) and Q(z|X) (red: density, 1 and 2 sd)", fontsize=9)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = study_parser(NAME, __doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a VAE run folder from 'pyro-vae train vae'")
    parser.add_argument("--images", type=int, default=3, help="number of test images (default 3)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument(
        "--draws", type=int, default=300, help="NUTS draws per chain after warm-up (MCMC's num_samples)"
    )
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument(
        "--num-samples", "-k", type=int, default=5000, help="K for both importance-sampling estimates"
    )
    parser.add_argument("--pair-dims", type=int, default=4, help="latent dimensions in each pair plot")
    parser.add_argument("--split", choices=["test", "valid"], default="test")
    args = parser.parse_args(argv)
    check_at_least_one("--images", "--chains", "--draws", "--num-samples", "--pair-dims")(args)

    device = resolve_device(args.device)
    config, vae = load_vae_run(args.run_dir, device=device)
    vae.requires_grad_(False)  # NUTS differentiates with respect to z only
    (images,) = load_eval_data(config, args.split, subset=args.images, data_dir=args.data_dir, device=device)
    seed_everything(config.train.eval_seed)
    started = time.perf_counter()
    all_draws, comparisons = [], []
    for i, x in enumerate(images):
        draws = sample_posterior(
            vae,
            x,
            num_chains=args.chains,
            num_samples=args.draws,
            warmup_steps=args.warmup,
            progress=not args.no_progress,
        ).cpu()
        all_draws.append(draws)
        comparisons.append(compare_image(vae, x, draws.to(device), num_samples=args.num_samples))
        print(
            f"image {i}: KL(Q || P(z|X)) ~ {comparisons[-1]['kl_is_gap']:.2f} (IS gap), "
            f"{comparisons[-1]['kl_mcmc']:.2f} (MCMC route) nats",
            flush=True,
        )
    idata = to_inference_data(all_draws, list(range(len(all_draws))))
    diag = diagnostics(idata)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(str(out / "posterior.nc"))
    plot_moments(out / "moments.png", comparisons)
    for i, (draws, comparison) in enumerate(zip(all_draws, comparisons)):
        # the dimensions where the posterior is most concentrated relative to the prior
        informative = np.argsort(np.array(comparison["mcmc_sd"]))[: args.pair_dims].tolist()
        plot_pairs(out / f"pairs_image{i}.png", draws, comparison, informative)
    results = {
        "run_dir": str(args.run_dir),
        "split": args.split,
        "num_images": len(comparisons),
        "num_chains": args.chains,
        "num_draws": args.draws,
        "warmup_steps": args.warmup,
        "num_samples": args.num_samples,
        "seconds": time.perf_counter() - started,
        "cost": cost_of(args.run_dir, eval_seconds=time.perf_counter() - started),
        "kl_is_gap": [c["kl_is_gap"] for c in comparisons],
        "kl_mcmc": [c["kl_mcmc"] for c in comparisons],
        "kl_mcmc_se": [c["kl_mcmc_se"] for c in comparisons],
        "kl_gaussian_fit": [c["kl_gaussian_fit"] for c in comparisons],
        "sd_ratio_q_over_mcmc": [
            float(np.median(np.array(c["q_sd"]) / np.array(c["mcmc_sd"]))) for c in comparisons
        ],
        **diag,
        "images": comparisons,
    }
    path = write_results(out, NAME, results)
    print(
        f"R-hat max {max(diag['rhat_max']):.3f}, bulk ESS min {min(diag['ess_bulk_min']):.0f}; wrote {path}"
    )
    return results


if __name__ == "__main__":
    raise SystemExit(run_study(main))

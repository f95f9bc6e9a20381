r"""Appendix A in numbers: in 1D the VAE's approximation error goes to zero as sigma -> 0.

The tutorial (Appendix A, Eqs. 16-22) builds, for a 1D ground truth P_gt with CDF F and the
standard normal CDF G, the decoder and the encoder

    f(z) = F^{-1}(G(z)),      P_sigma(X|z) = N(X | f(z), sigma^2),      z ~ N(0, 1),
    g(X) = G^{-1}(F(X)),      Q_sigma(z|X) = N(z | g(X), (g'(X) sigma)^2),

and argues that P_sigma(X) -> P_gt(X) and KL(Q_sigma(z|X) || P_sigma(z|X)) -> 0 as sigma -> 0.
This study measures both. Every integral over z is done by deterministic quadrature in the
standardized coordinate z0 of Eq. 17,

    z = g(X) + (z0 - g(X)) sigma,      Q^0(z0|X) = N(z0 | g(X), g'(X)^2),
    P^0_sigma(z0|X) = P_sigma(z | X) sigma,

in which both distributions have a width of order one at every sigma, so that a fixed grid
resolves posteriors of width ~sigma (in z) as well at sigma = 0.003 as at sigma = 0.3.

Expanding Eqs. 18-21 to second order (see :func:`kl_expansion`) gives, with c = g''/(2 g') and
d = g g',

    KL(Q_sigma || P_sigma(z|X)) = sigma^2 (15 c^2 - 6 c d + d^2) / 2 + O(sigma^3):

the slope 2 of log KL against log sigma, and the "curvature" of Eq. 21 (c) together with a prior
term (d) that Eq. 18 folds into its constant C. The best Gaussian (here: moment-matched) removes
the prior term and leaves sigma^2 3 c^2 = (3/4) (g''/g')^2 sigma^2, the curvature alone.

With ``--learned`` a 1D VAE is trained in Pyro (MLP encoder and decoder, Gaussian likelihood
with the fixed sigma, SVI on Eq. 10 with the closed-form KL) on samples of P_gt, and its gap
log P(X) - ELBO on held-out X (log P(X) by quadrature over z) is compared with the constructive
encoder's.

Outputs in ``--out``: ``zero_error_1d.json`` and

- ``kl_vs_sigma.png``: X-averaged KL against sigma (log-log) with the sigma^2 guide;
- ``p_sigma_<truth>.png``: P_sigma against P_gt, and (P_sigma - P_gt) / sigma^2;
- ``posterior_<truth>.png``: Q^0 against the exact P^0_sigma(z0|X) for one X at every sigma;
- ``kl_vs_x_<truth>.png``: KL / sigma^2 against X beside the curvature prediction;
- with ``--learned``: ``learned_decoder.png`` (learned f against F^{-1}(G(+-z))) and
  ``learned_gap.png`` (learned against constructive gap).

    python -m analysis.zero_error_1d --out results/zero_error_1d
    python -m analysis.zero_error_1d --learned --out results/zero_error_1d

The package is organized by role: :mod:`.ground_truths` (P_gt), :mod:`.construction` (f, g and
the KL expansion), :mod:`.quadrature` (the exact integrals, and the Gaussian closed forms),
:mod:`.study` (the table), :mod:`.learned` (the trained 1D VAE), :mod:`.figures` and :mod:`.cli`.
"""

from __future__ import annotations

from .cli import main  # noqa: F401  (python -m analysis.zero_error_1d; the pieces live in the modules above)

"""Extensions that survive a reload: registries by name, their own settings, and plugin modules.

A likelihood, prior or guide is registered under a name with a *factory*:

- ``register_likelihood(name, factory)``: ``factory(config, dim, **options) -> Likelihood`` (``dim``:
  the number of data dimensions the likelihood covers);
- ``register_prior(name, factory)``: ``factory(config, encoder, **options) -> nn.Module`` (the
  encoder, for priors that share it, such as the VampPrior);
- ``register_guide(name, factory)``: ``factory(config, **options) -> nn.Module`` (see
  :mod:`pyro_vae.guides` for what a guide network provides).

``options`` are the extension's own settings. They are stored in ``config.json``
(``likelihood_options``, ``prior_options``, ``guide_options``; on the command line
``--likelihood-option df=5``), and so is the list of *plugin modules* that registered the
extensions (``--plugin MODULE``): every later command that reads the run (``evaluate``,
``sample``, ``complete``, the studies, :func:`pyro_vae.load_run`) imports them again before it
rebuilds the model. Only importable modules are recorded, never pickled code. An installed
package can also register through the entry-point group ``pyro_vae.plugins``: each entry point is
a module (imported) or a callable (called with no arguments), loaded when a name is not found.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any

from .errors import ConfigError

ENTRY_POINT_GROUP = "pyro_vae.plugins"
_entry_points_loaded = False


def register_likelihood(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Make ``--likelihood NAME`` build ``factory(config, dim, **likelihood_options)``."""
    from .builders import LIKELIHOODS

    _register(LIKELIHOODS, "likelihood", name, factory, replace)


def register_prior(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Make ``--prior NAME`` build ``factory(config, encoder, **prior_options)`` (VAE priors)."""
    from .builders import PRIORS

    _register(PRIORS, "prior", name, factory, replace)


def register_guide(name: str, factory: Callable[..., Any], *, replace: bool = False) -> None:
    """Make ``--guide NAME`` build ``factory(config, **guide_options)``."""
    from .builders import GUIDES

    _register(GUIDES, "guide", name, factory, replace)


def _register(registry: dict, kind: str, name: str, factory: Callable, replace: bool) -> None:
    if not callable(factory):
        raise ConfigError(f"the {kind} factory registered as {name!r} is not callable")
    if name in registry and not replace and registry[name] is not factory:
        raise ConfigError(f"a {kind} named {name!r} is already registered; pass replace=True to replace it")
    registry[name] = factory


def build_extension(kind: str, name: str, factory: Callable, args: tuple, options: dict[str, Any]):
    """``factory(*args, **options)``, or one line saying which options the factory does not take."""
    try:
        inspect.signature(factory).bind(*args, **options)
    except TypeError as error:
        given = ", ".join(f"{key}={value!r}" for key, value in options.items()) or "none"
        raise ConfigError(f"the {kind} {name!r} does not take the options given ({given}): {error}") from None
    except ValueError:  # no signature to inspect (a builtin): let the call decide
        pass
    return factory(*args, **options)


def import_plugins(modules: Iterable[str]) -> None:
    """Import each plugin module (which registers its extensions); one line naming a failure."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(
                f"cannot import the plugin module {module!r} ({error}); install it or put its folder on "
                "PYTHONPATH"
            ) from None


def load_entry_point_plugins() -> None:
    """Load every ``pyro_vae.plugins`` entry point once per process."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
        except ImportError as error:
            raise ConfigError(
                f"the installed pyro_vae plugin {point.name!r} cannot be imported ({error})"
            ) from None
        if callable(loaded) and not inspect.ismodule(loaded):
            loaded()


def parse_option(text: str) -> tuple[str, Any]:
    """``"df=5"`` -> ``("df", 5)``: the value is read as JSON (numbers, true/false, lists), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"an option is KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value

"""Extensions by name: registration, their settings in config.json, plugin modules, entry points."""

from __future__ import annotations

import argparse
import types

import pytest

from pyro_vae import RunConfig, VAEConfig, build_vae, plugins, register_likelihood, register_prior
from pyro_vae.builders import LIKELIHOODS, PRIORS, StandardNormalPrior
from pyro_vae.cli_options import option_pair
from pyro_vae.errors import ConfigError
from pyro_vae.likelihoods import BernoulliLikelihood


@pytest.fixture(autouse=True)
def clean_registries(monkeypatch):
    monkeypatch.setattr("pyro_vae.builders.LIKELIHOODS", dict(LIKELIHOODS))
    monkeypatch.setattr("pyro_vae.builders.PRIORS", dict(PRIORS))
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)


def test_options_reach_the_factory_and_survive_the_config_round_trip():
    seen = {}

    def factory(config, dim, temperature=1.0):
        seen["temperature"] = temperature
        return BernoulliLikelihood()

    register_likelihood("tempered", factory)
    config = RunConfig(model=VAEConfig(likelihood="tempered", likelihood_options={"temperature": 0.5}))
    rebuilt = RunConfig.from_dict(config.to_dict())
    assert rebuilt == config
    build_vae(rebuilt.model)
    assert seen == {"temperature": 0.5}


def test_bad_registrations_and_options_are_one_line_errors():
    register_prior("mine", lambda config, encoder: StandardNormalPrior(config.z_dim))
    with pytest.raises(ConfigError, match="already registered"):
        register_prior("mine", lambda config, encoder: None)
    with pytest.raises(ConfigError, match="not callable"):
        register_prior("other", 3)
    with pytest.raises(ConfigError, match="does not take the options given \\(scale=2\\)"):
        build_vae(VAEConfig(prior="mine", prior_options={"scale": 2}))
    with pytest.raises(ConfigError, match="options must be a mapping"):
        VAEConfig(likelihood_options=[("df", 5)])
    with pytest.raises(ConfigError, match="unknown likelihood 'nobody'.*--plugin MODULE"):
        VAEConfig(likelihood="nobody")


def test_a_config_imports_its_plugins_before_checking_names(monkeypatch):
    module = types.ModuleType("fake_plugin_module")
    module_imports = []

    def fake_import(name):
        if name != "fake_plugin_module":
            raise ImportError(f"No module named {name!r}")
        module_imports.append(name)
        register_likelihood("from-plugin", lambda config, dim: BernoulliLikelihood())
        return module

    monkeypatch.setattr(plugins.importlib, "import_module", fake_import)
    values = RunConfig(model=VAEConfig()).to_dict()
    values["model"]["likelihood"] = "from-plugin"
    values["plugins"] = ["fake_plugin_module"]
    config = RunConfig.from_dict(values)
    assert module_imports == ["fake_plugin_module"] and config.plugins == ("fake_plugin_module",)
    with pytest.raises(ConfigError, match="cannot import the plugin module 'surely_missing_module_x'"):
        RunConfig.from_dict({**values, "plugins": ["surely_missing_module_x"]})


def test_entry_points_register_names_when_one_is_missing(monkeypatch):
    calls = []

    class Point:
        name = "demo"

        def load(self):
            return lambda: (
                calls.append(1),
                register_likelihood("from-entry-point", lambda c, d: BernoulliLikelihood()),
            )

    monkeypatch.setattr(
        plugins, "entry_points", lambda group: [Point()] if group == "pyro_vae.plugins" else []
    )
    assert VAEConfig(likelihood="from-entry-point").likelihood == "from-entry-point"
    VAEConfig(likelihood="from-entry-point")
    assert calls == [1]  # loaded once per process


@pytest.mark.parametrize(
    ("text", "expected"), [("df=5", ("df", 5)), ("scale=0.5", ("scale", 0.5)), ("name=abc", ("name", "abc")),
                           ("flag=true", ("flag", True)), ("sizes=[1, 2]", ("sizes", [1, 2]))],
)  # fmt: skip
def test_option_values_are_read_as_json_where_they_parse(text, expected):
    assert option_pair(text) == expected


def test_an_option_without_a_key_is_refused():
    with pytest.raises(argparse.ArgumentTypeError, match="KEY=VALUE"):
        option_pair("5")

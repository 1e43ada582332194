"""Config validation: every bad value is refused with a message naming its key."""

import json

import pytest

from ostracon.cluster.config import Config, from_dict, load, parse_overrides
from ostracon.cluster.errors import ConfigError


def test_defaults_are_valid_and_round_trip(tmp_path):
    config = from_dict({})
    assert isinstance(config, Config)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config.to_dict()))
    assert load(path) == config


def test_example_configs_load():
    import os

    from ostracon.cluster.cli import EXAMPLES_DIR

    names = [n for n in os.listdir(EXAMPLES_DIR) if n.endswith(".toml")]
    assert names
    for name in names:
        load(os.path.join(EXAMPLES_DIR, name))


@pytest.mark.parametrize(
    "raw, key",
    [
        ({"bogus": 1}, "bogus"),
        ({"training": {"rounds_": 3}}, "training.rounds_"),
        ({"training": {"workers": 6, "f": 3}}, "training.f"),
        ({"training": {"rule": "median_of_means"}}, "training.rule"),
        ({"training": {"rounds": "ten"}}, "training.rounds"),
        ({"training": {"pre": ["nope"]}}, "training.pre"),
        ({"byzantine": {"count": 1, "behaviour": "teleport"}}, "byzantine.behaviour"),
        ({"byzantine": {"count": 10}}, "byzantine.count"),
        ({"data": {"source": "imagenet"}}, "data.source"),
        ({"data": {"source": "npz", "path": "/nonexistent/file.npz"}}, "data.path"),
        ({"model": {"name": "transformer"}}, "model.name"),
        ({"unlearning": {"slices": 500}, "training": {"rounds": 10}}, "unlearning.slices"),
        ({"backend": {"name": "spark"}}, "backend.name"),
        ({"training": {"rule": "cwtm", "rule_params": {"unknown_knob": 1}}}, "rule_params"),
        ({"byzantine": {"count": 2, "behaviour": "alie", "params": {"tau": -1.0, "zzz": 1}}}, "byzantine.params"),
        ({"training": {"momentum": 1.0}}, "training.momentum"),
    ],
)
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(raw)


def test_overrides_parse_toml_literals_and_plain_strings(tmp_path):
    parsed = parse_overrides(["training.rounds=7", "data.source=synthetic", "training.lr=0.25",
                              'training.pre=["nnm"]'])
    assert parsed == {"training.rounds": 7, "data.source": "synthetic", "training.lr": 0.25,
                      "training.pre": ["nnm"]}
    path = tmp_path / "c.toml"
    path.write_text("[training]\nrounds = 3\n")
    config = load(path, parsed)
    assert config.training.rounds == 7 and config.data.source == "synthetic"
    assert config.training.pre == ("nnm",)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["no_equals_sign"])


def test_pre_aggregation_tables():
    config = from_dict({"training": {"protocol": "server", "rule": "cwtm", "f": 1, "workers": 5,
                                     "pre": [{"name": "bucketing", "bucket_size": 2}, "nnm"]}})
    assert config.training.pre == (("bucketing", {"bucket_size": 2}), "nnm")
    assert from_dict(config.to_dict()) == config


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load("/nonexistent/config.toml")

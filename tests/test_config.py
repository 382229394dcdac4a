"""Profiles and overrides: every shipped profile validates; bad input is one clear line."""

import pytest

from dpcore.config import Config, config_from_dict
from dpcore.errors import ConfigError
from dpcore.profiles import list_profiles, load_profile, parse_override


def test_every_shipped_profile_validates():
    names = list_profiles()
    assert {"quickstart", "cifar10-alexnet", "cifar100-convnet", "cifar10-convnet-cpu"} <= set(names)
    for name in names:
        cfg, path = load_profile(name)
        assert isinstance(cfg, Config) and path.name == f"{name}.toml"


def test_overrides_are_typed_toml_values():
    cfg, _ = load_profile("quickstart", ["train.epochs=5", "prune.methods=['imp']", "run.seeds=[3, 4]",
                                         "model.name=convnet", "model.width=16", "run.device=cpu"])
    assert cfg.train.epochs == 5 and cfg.prune.methods == ["imp"] and cfg.run.seeds == [3, 4]
    assert cfg.model.name == "convnet" and cfg.model.options == {"width": 16}
    assert parse_override("synthetic.method=dm") == (["synthetic", "method"], "dm")
    assert parse_override("train.lr=1e-3")[1] == pytest.approx(1e-3)


@pytest.mark.parametrize("toml, needles", [
    ("[train]\nepoch = 5\n", ["bad.toml", "'train.epoch'", "did you mean 'train.epochs'"]),
    ("[train]\nepochs = 'ten'\n", ["bad.toml", "'train.epochs'", "must be an integer"]),
    ("[prune]\nfraction = 1.5\n", ["bad.toml", "'prune.fraction'", "between 0 and 1"]),
    ("[prune]\nmethods = ['imp', 'magic']\n", ["'prune.methods'", "'distilled'"]),
    ("[run]\ndevice = 'tpu'\n", ["'run.device'", "'auto'"]),
    ("[trian]\nepochs = 1\n", ["unknown section '[trian]'", "did you mean '[train]'"]),
    ("[model]\nname = 'convnet'\nwidht = 3\n", ["'model.widht'", "width"]),
    ("[model]\nname = 'transformer'\n", ["model.name", "lenet-300-100"]),
    ("[train\nepochs = 1\n", ["bad.toml", "not valid TOML"]),
])
def test_bad_profiles_are_one_line_naming_file_and_key(tmp_path, toml, needles):
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_profile(str(path))
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message


def test_bad_override_names_the_flag():
    with pytest.raises(ConfigError, match=r"--set 'epochs': expected SECTION.KEY=VALUE"):
        load_profile("quickstart", ["epochs"])
    with pytest.raises(ConfigError, match=r"with --set train.batch_size=0.*'train.batch_size' = 0 must be >= 1"):
        load_profile("quickstart", ["train.batch_size=0"])


def test_missing_profile_lists_available():
    with pytest.raises(ConfigError, match="no profile named 'nope'; available: .*quickstart"):
        load_profile("nope")


def test_ints_are_accepted_for_floats_and_bools_are_not_ints():
    cfg = config_from_dict({"train": {"lr": 1}})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match="must be an integer"):
        config_from_dict({"train": {"epochs": True}})

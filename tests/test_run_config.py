"""dpcore.run_config: a run's config rebuilt from its directory plans exactly that run again."""

import pytest

from dpcore.config import to_dict
from dpcore.experiment import Experiment, run_experiment
from dpcore.errors import DPError
from dpcore.profiles import load_profile
from dpcore.run_config import RunSpec, load_run_config

FAST = ["prune.rounds=1", "train.epochs=1"]


def check_round_trip(runs, res) -> RunSpec:
    spec = load_run_config(runs / res.run_id)
    (plan,) = Experiment(spec.cfg, spec.run_dir.parent, device=spec.device).plans
    assert plan.run_id == spec.run_id == spec.plan.run_id == res.run_id
    assert (spec.method, spec.seed, spec.variant) == (res.method, res.seed, res.variant)
    assert (plan.method, plan.seed, plan.variant) == (res.method, res.seed, res.variant)
    assert spec.cfg.run.seeds == [res.seed] and spec.cfg.prune.methods == [res.method]
    assert spec.device == "cpu" and spec.cfg.run.device == "cpu"
    return spec


def test_a_headless_run_round_trips(tmp_path, tiny_profile, one_thread):
    cfg, _ = load_profile(str(tiny_profile), [*FAST, "prune.methods=['imp', 'random']", "run.seeds=[0, 1]"])
    runs = tmp_path / "runs"
    results = run_experiment(cfg, runs)
    assert len(results) == 4
    for res in results:
        spec = check_round_trip(runs, res)
        assert to_dict(spec.cfg.train) == to_dict(cfg.train) and spec.cfg.experiment.name == "tiny"


def test_a_synthetic_variant_run_keeps_its_source_and_label(tmp_path, tiny_profile, one_thread):
    variants = ('synthetic.variants=[{method="random-subset"}, '
                '{name="dm-3", method="dm", params={iterations=3, batch_real=16}}]')
    cfg, _ = load_profile(str(tiny_profile), [*FAST, variants, "prune.methods=['distilled']"])
    runs = tmp_path / "runs"
    results = run_experiment(cfg, runs)
    assert sorted(r.variant for r in results) == ["dm-3", "random-subset ipc2"]
    for res in results:
        spec = check_round_trip(runs, res)
        assert spec.plan.synthetic is not None and len(spec.cfg.synthetic.variants) == 1
        if spec.variant == "dm-3":
            assert spec.plan.synthetic.method == "dm" and spec.plan.synthetic.params["iterations"] == 3
        else:
            assert spec.plan.synthetic.method == "random-subset" and spec.plan.synthetic.params == {}


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text and text
    return text


def test_a_directory_without_config_toml_is_refused_in_one_line(tmp_path):
    (tmp_path / "notarun").mkdir()
    with pytest.raises(DPError) as err:
        load_run_config(tmp_path / "notarun")
    text = one_line(err)
    assert str(tmp_path / "notarun") in text and "no config.toml" in text and "dptui runs" in text


def test_a_config_toml_that_does_not_name_its_run_or_plans_another_is_refused(tmp_path, tiny_profile, one_thread):
    cfg, _ = load_profile(str(tiny_profile), [*FAST, "prune.methods=['random']"])
    runs = tmp_path / "runs"
    (res,) = run_experiment(cfg, runs)
    path = runs / res.run_id / "config.toml"
    text = path.read_text()
    path.write_text(text.replace(f'run_id = "{res.run_id}"', ""))
    with pytest.raises(DPError) as err:
        load_run_config(path.parent)
    assert "has no run.run_id" in one_line(err) and str(path) in str(err.value)
    path.write_text(text.replace("lr = 0.002", "lr = 0.003"))  # another config: another run id
    with pytest.raises(DPError) as err:
        load_run_config(path.parent)
    assert f"no longer plans run {res.run_id}" in one_line(err)

"""Several synthetic sources in one experiment: config, run identity, engine, the distillers table, CLI."""

import json

import pytest
import torch

from dpcore.config import synthetic_variants
from dpcore.experiment import Experiment, run_experiment
from dpcore.errors import ConfigError
from dpcore.profiles import load_profile
from dpcore.summary import experiment_tables, label_runs

from test_cli import dptui

VARIANTS = ('synthetic.variants=[{method="random-subset"}, {method="dm", params={iterations=3, batch_real=16}}, '
            '{name="dm-1", method="dm", ipc=1, lr=0.02}]')


def test_variants_inherit_training_settings_but_not_params(tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), [VARIANTS])
    vs = synthetic_variants(cfg)
    assert [v.label for v in vs] == ["random-subset ipc2", "dm ipc2", "dm-1"]
    assert vs[0].config.params == {} and vs[0].config.epochs == 4  # [synthetic].epochs inherited, params not
    assert vs[1].config.params == {"iterations": 3, "batch_real": 16}
    assert vs[2].config.ipc == 1 and vs[2].config.lr == 0.02 and vs[2].config.batch_size == 16


@pytest.mark.parametrize("value, needle", [
    ('[{method="dm", ipc=0}]', "'synthetic.variants[0].ipc' = 0 must be >= 1"),
    ('[{method="dm", lrr=1}]', "did you mean 'synthetic.variants[0].lr'"),
    ('[{method="dm"}, {method="dm"}]', "same source and settings as synthetic.variants[0]"),
    ('[{method="dm"}, {method="dm", lr=0.5}]', "give it a name"),
    ('[1, 2]', "must be a list of tables"),
])
def test_bad_variants_are_one_clear_line(tiny_profile, value, needle):
    with pytest.raises(ConfigError) as err:
        load_profile(str(tiny_profile), [f"synthetic.variants={value}"])
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_one_distilled_run_per_variant_with_its_own_identity(tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), [VARIANTS])
    plans = Experiment(cfg, device="cpu").plans
    assert [p.label for p in plans] == ["imp", "distilled random-subset ipc2", "distilled dm ipc2",
                                        "distilled dm-1", "random"]
    assert len({p.run_id for p in plans}) == 5
    plain, _ = load_profile(str(tiny_profile))
    base = {p.method: p.run_id for p in Experiment(plain, device="cpu").plans}
    # imp and random do not depend on the synthetic source; "dm ipc2" is exactly the plain profile's source
    assert plans[0].run_id == base["imp"] and plans[4].run_id == base["random"]
    assert plans[2].run_id == base["distilled"]
    renamed, _ = load_profile(str(tiny_profile), [VARIANTS.replace('name="dm-1"', 'name="dm one"')])
    assert [p.run_id for p in Experiment(renamed, device="cpu").plans] == [p.run_id for p in plans]


def test_experiment_with_variants_gives_a_distillers_table(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), [VARIANTS, "prune.methods=['imp', 'distilled']"])
    results = run_experiment(cfg, tmp_path / "runs")
    distilled = [r for r in results if r.method == "distilled"]
    assert [r.variant for r in distilled] == ["random-subset ipc2", "dm ipc2", "dm-1"]
    assert [r.synthetic.images for r in distilled] == [8, 8, 4]
    assert distilled[0].synthetic.distill_s < distilled[1].synthetic.distill_s
    assert results[0].variant == ""  # no variant: the key is not written
    tables = experiment_tables(results)
    rounds = [row["method"] for row in tables[0].rows]
    assert "distilled dm-1" in rounds and "distilled" not in rounds
    assert [t.title for t in tables[:3]] == ["Rounds", "Headline", "Distillers"]
    headline = {row["method"] for row in tables[1].rows}  # one line per source against imp
    assert headline == {"distilled random-subset ipc2", "distilled dm ipc2", "distilled dm-1"}
    table = tables[2]
    assert [(row["distiller"], row["round"]) for row in table.rows] == \
        [(v, r) for v in ("random-subset ipc2", "dm ipc2", "dm-1") for r in (1, 2, 3)]
    for row in table.rows:
        run = next(r for r in distilled if r.variant == row["distiller"])
        mine = run.rounds[row["round"] - 1]
        assert row["val_acc"].mean == mine.val_acc and row["time_to_mask_s"].mean == mine.time_to_mask_s
        assert row["distill_s"] == run.synthetic.distill_s  # one set, one number (no ±0)
        assert row["total_s"].mean == pytest.approx(mine.time_to_mask_s + run.synthetic.distill_s)
        assert row["imp_val_acc"].mean == results[0].rounds[row["round"] - 1].val_acc
    assert {r.label for r in label_runs(results)} == \
        {"imp", "distilled random-subset ipc2", "distilled dm ipc2", "distilled dm-1"}
    # the synthetic variant's run dir records its own settings, so `dptui analyze` can rebuild it
    config = (tmp_path / "runs" / distilled[2].run_id / "config.toml").read_text()
    assert 'variant = "dm-1"' in config and "ipc = 1" in config


def test_headless_prints_the_distillers_table_and_distill_picks_a_variant(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--set", VARIANTS,
                 "--set", "prune.methods=['imp', 'distilled']", "--set", "prune.rounds=2", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "Distillers" in proc.stdout and "distill+t2m s" in proc.stdout and "dm-1" in proc.stdout
    exported = json.loads((tmp_path / "out" / "summary.json").read_text())
    distillers = next(t for t in exported if t["title"] == "Distillers")
    assert len(distillers["rows"]) == 3 * 2 and (tmp_path / "out" / "distillers.csv").is_file()

    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--set", VARIANTS,
                 "--variant", "dm-1", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["source"] == "dm ipc1" and out["images"] == 4 and out["cached"] is True  # made by the experiment
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--set", VARIANTS, "--json")
    assert proc.returncode == 2 and "choose one with --variant" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--set", VARIANTS,
                 "--method", "random-subset", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["source"] == "random-subset ipc2"
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--set", VARIANTS,
                 "--set", "run.seeds=[0, 1]", "--variant", "all", "--evaluate", "--json")
    assert proc.returncode == 0, proc.stderr
    every = json.loads(proc.stdout)
    assert [r["variant"] for r in every] == ["random-subset ipc2", "dm ipc2", "dm-1"]
    for r in every:
        assert r["cached"] in (True, None) and len(r["test_accs"]) == 2
        assert r["test_acc"] == pytest.approx(sum(r["test_accs"]) / 2)
        meta = json.loads((runs / "cache" / "synthetic" / r["key"] / "meta.json").read_text())
        assert meta["test_acc"] == r["test_acc"] and meta["evaluation"]["seeds"] == [0, 1]  # recorded in the cache
    proc = dptui("distill", "--profile", str(tiny_profile), "--runs-dir", str(runs), "--set", VARIANTS,
                 "--variant", "all", "--evaluate")
    assert proc.returncode == 0 and "Synthetic sources" in proc.stdout and "dm-1" in proc.stdout


def test_a_diverged_inner_training_fails_its_run_and_the_others_go_on(tmp_path, tiny_profile):
    cfg, _ = load_profile(str(tiny_profile), ['synthetic.variants=[{method="dm", params={iterations=3, batch_real=16}},'
                                              ' {name="hot", method="dm", lr=1e12, params={iterations=3, batch_real=16}}]'])
    results = run_experiment(cfg, tmp_path / "runs")
    by = {r.variant or r.method: r for r in results}
    assert by["hot"].status == "failed" and by["hot"].rounds == []
    assert "diverged" in by["hot"].error and "lower synthetic.lr (now 1e+12)" in by["hot"].error
    assert all(by[k].status == "done" for k in ("imp", "dm ipc2", "random"))


def test_a_set_from_files_is_a_source_with_its_ipc_from_its_labels(tmp_path, tiny_profile):
    folder = tmp_path / "made-elsewhere"
    folder.mkdir()
    torch.save(torch.randn(8, 1, 8, 8), folder / "images_best.pt")
    torch.save(torch.arange(4).repeat_interleave(2), folder / "labels_best.pt")
    cfg, _ = load_profile(str(tiny_profile), [f'synthetic.variants=[{{path="{folder}"}}, {{method="random-subset"}}]',
                                              "prune.methods=['distilled']", "prune.rounds=1"])
    files, subset = run_experiment(cfg, tmp_path / "runs")
    assert files.variant == "made-elsewhere" and files.synthetic.ipc == 2
    assert files.synthetic.distill_s is None and subset.synthetic.distill_s is not None
    (table,) = [t for t in experiment_tables([files, subset]) if t.title == "Distillers"]
    assert [(r["distiller"], r["ipc"], r["distill_s"]) for r in table.rows] == \
        [("made-elsewhere", 2, None), ("random-subset ipc2", 2, subset.synthetic.distill_s)]
    assert not any("cached set" in note for note in table.notes)

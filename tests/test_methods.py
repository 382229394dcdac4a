"""Every fast way to a ticket in one experiment: IMP, distilled (a distiller and the EL2N data diet),
random, and pruning at initialisation (SNIP, GraSP, SynFlow), in the same tables and exports."""

import csv
import json

import torch

from dpcore.masks import sparsity
from dpcore.store import RunDir
from test_cli import dptui

METHODS = ["imp", "distilled", "random", "snip", "grasp", "synflow"]


def test_every_method_runs_headless_into_every_table_and_export(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs),
                 "--set", f"prune.methods={json.dumps(METHODS)}", "--set", "prune.synflow_iterations=10",
                 "--set", "synthetic.method='el2n'", "--set", "synthetic.params={seeds = 2, epochs = 2}")
    assert proc.returncode == 0, proc.stderr
    assert "Methods vs imp" in proc.stdout
    results = {r["method"]: r for r in (json.loads(p.read_text()) for p in runs.glob("*/results.json"))}
    assert sorted(results) == sorted(METHODS) and all(r["status"] == "done" for r in results.values())
    assert results["distilled"]["synthetic"]["source"] == "el2n ipc2"
    for method in ("snip", "grasp", "synflow"):
        res = results[method]
        for row in res["rounds"]:  # one shot per round, at the round's target, scored in time-to-mask
            mask = RunDir(runs, res["run_id"]).load_mask(row["round"])
            assert abs(sparsity(mask) - (1 - 0.8 ** row["round"])) < 0.01
            assert row["inner_train_s"] == 0.0 and row["time_to_mask_s"] == row["prune_s"] > 0
        first, last = (RunDir(runs, res["run_id"]).load_mask(r) for r in (1, 3))
        assert any(not torch.equal(first[n], last[n]) for n in first)
    (export,) = (runs / "experiments").iterdir()
    rounds = list(csv.DictReader((export / "rounds.csv").open()))
    assert {r["method"] for r in rounds} == {"dense", *METHODS}
    methods = list(csv.DictReader((export / "methods.csv").open()))
    assert {r["method"] for r in methods} == set(METHODS) - {"imp"}
    md = (export / "summary.md").read_text()
    assert all(m in md for m in METHODS)


def test_hessian_and_landscape_of_trained_tickets_reach_results_tables_and_figures(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    args = ("--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs),
            "--set", "prune.methods=['imp','distilled']", "--set", "analysis.hessian_rounds=[1,3]",
            "--set", "analysis.landscape_rounds=[3]", "--set", "analysis.landscape_grid=5",
            "--set", "analysis.figures=true")
    proc = dptui(*args)
    assert proc.returncode == 0, proc.stderr
    assert "Hessian and landscape" in proc.stdout
    for path in runs.glob("*/results.json"):
        res = json.loads(path.read_text())
        assert [e["round"] for e in res["hessian"]] == [1, 3]
        assert all(e["eigenvalue"] > 0 and e["iterations"] >= 1 and e["history"] for e in res["hessian"])
        (slice_,) = res["landscape"]
        assert len(slice_["loss"]) == 5 and len(slice_["loss"][0]) == 5
        assert slice_["loss"][2][2] == slice_["centre_loss"] and slice_["mean_rise"] > 0  # a minimum of sorts
        assert (path.parent / "figures" / "landscape.svg").is_file()
    again = dptui(*args)  # finished: nothing is recomputed
    assert again.returncode == 0 and "round  1" not in again.stdout

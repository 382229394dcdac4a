"""The CLI as a user runs it: a real subprocess, exit codes, tables, exports, kill and resume."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from dpcore.safe_load import safe_torch_load


def cli_env():
    # One intra-op thread: tiny models gain nothing from more, and oversubscribed cores slow torch many-fold.
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("DPTUI_RUNS_DIR", None)
    return env


def dptui(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "dptui", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=cli_env())


def test_headless_end_to_end_prints_and_exports_tables(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "Rounds" in out and "Speed-up of distilled over imp" in out
    assert "time-to-distill" in out
    # The headline: each method against imp at the deepest round both validated, from the Headline table's row.
    line = next(ln for ln in out.splitlines() if ln.startswith("headline distilled: the 48.8% mask "))
    assert "faster than imp (" in line and "with its validation)" in line
    assert line.endswith(("points below", "points above", "the same accuracy"))
    assert any(ln.startswith("headline random: ") and ln.endswith(" imp at 48.8%") for ln in out.splitlines())
    exports = list((runs / "experiments").iterdir())
    assert len(exports) == 1
    folder = exports[0]
    for name in ("rounds.csv", "speedup.csv", "summary.json", "summary.md", "summary.html", "summary.tex"):
        assert (folder / name).stat().st_size > 0
    tex = (folder / "summary.tex").read_text()  # booktabs tables of the same rows, the best cells in bold
    assert tex.count(r"\begin{tabular}") == tex.count(r"\bottomrule") >= 3 and r"\toprule" in tex
    assert r"\textbf{" in tex and r"$\pm$" in tex and "±" not in tex
    if shutil.which("pdflatex"):  # compile it where a LaTeX install is there
        doc = folder / "doc.tex"
        doc.write_text("\\documentclass{article}\\usepackage{booktabs}\\begin{document}\n\\input{summary.tex}\n"
                       "\\end{document}\n")
        built = subprocess.run(["pdflatex", "-interaction=nonstopmode", "doc.tex"], cwd=folder, capture_output=True)
        assert built.returncode == 0, built.stdout[-2000:]
    rows = list(csv.DictReader((folder / "rounds.csv").open()))
    assert [r["method"] for r in rows] == ["dense"] + ["imp"] * 3 + ["distilled"] * 3 + ["random"] * 3
    tables = json.loads((folder / "summary.json").read_text())
    headline = next(t for t in tables if t["title"] == "Headline")
    assert [r["method"] for r in headline["rows"]] == ["distilled", "random"]
    assert headline["rows"][0]["round"] == 3 and headline["rows"][1]["speedup"] is None
    table = tables[0]
    # Every export carries the same numbers: CSV value == JSON value == the Markdown cell.
    imp3 = next(r for r in table["rows"] if r["method"] == "imp" and r["round"] == 3)
    csv3 = next(r for r in rows if r["method"] == "imp" and r["round"] == "3")
    assert float(csv3["val_acc_mean"]) == imp3["val_acc"]["mean"]
    cell = f"{100 * imp3['val_acc']['mean']:.2f}"
    assert cell in (folder / "summary.md").read_text() and cell in (folder / "summary.html").read_text()

    listing = dptui("runs", "--runs-dir", str(runs))
    assert listing.returncode == 0
    assert listing.stdout.count("done") == 3 and "tiny" in listing.stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path, tiny_profile):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = -1\n")
    proc = dptui("--headless", "--profile", str(bad), "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "bad.toml" in proc.stderr and "'train.epochs' = -1 must be >= 1" in proc.stderr

    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "data.path=/nowhere/x.npz",
                 "--runs-dir", str(tmp_path / "runs"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "/nowhere/x.npz" in proc.stderr

    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "prune.rounds=zero")
    assert proc.returncode == 2 and "'prune.rounds'" in proc.stderr


def test_help_everywhere():
    for args in ([], ["runs"], ["profiles"]):
        proc = dptui(*args, "--help")
        assert proc.returncode == 0 and "Usage" in proc.stdout
    assert "--headless" in dptui("--help").stdout


def wait_for(path: Path, needle: str, proc, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and needle in path.read_text():
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "exited early"
        time.sleep(0.05)
    raise AssertionError(f"{needle} never appeared in {path}")


def test_killed_headless_run_resumes_to_the_same_masks(tmp_path, tiny_profile):
    slow = ["--set", "train.epochs=60", "--set", "prune.methods=['imp']", "--set", "prune.rounds=4"]
    full = dptui("--headless", "--profile", str(tiny_profile), *slow, "--runs-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr

    runs = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "dptui", "--headless", "--profile", str(tiny_profile), *slow,
                             "--runs-dir", str(runs)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=cli_env())
    try:
        (run_id,) = [p.name for p in (tmp_path / "full").iterdir() if len(p.name) == 16]
        events = runs / run_id / "events.jsonl"
        wait_for(events, '"round":3,"rounds"', proc)  # round 3 has started: kill it mid-round
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert not (runs / run_id / "round_004.json").exists()
    results = json.loads((runs / run_id / "results.json").read_text())
    assert results["status"] == "running" and len(results["rounds"]) == 2

    again = dptui("--headless", "--profile", str(tiny_profile), *slow, "--runs-dir", str(runs))
    assert again.returncode == 0, again.stderr
    assert "resuming after round 2" in again.stdout
    for r in range(1, 5):
        a = safe_torch_load(tmp_path / "full" / run_id / f"round_{r:03d}.pt")["mask"]
        b = safe_torch_load(runs / run_id / f"round_{r:03d}.pt")["mask"]
        assert all(torch.equal(a[n], b[n]) for n in a)
    assert json.loads((runs / run_id / "results.json").read_text())["status"] == "done"


def test_an_exception_in_training_fails_the_run_with_exit_1_and_the_others_go_on(tmp_path, tiny_profile):
    from typer.testing import CliRunner

    import dpcore.engine as engine
    from dptui.cli import app

    real = engine.Run.train_synthetic

    def broken(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    engine.Run.train_synthetic = broken
    try:
        result = CliRunner().invoke(app, ["--headless", "--profile", str(tiny_profile), "--runs-dir", str(tmp_path / "r")])
    finally:
        engine.Run.train_synthetic = real
    assert result.exit_code == 1
    statuses = sorted(json.loads(p.read_text())["status"] for p in (tmp_path / "r").glob("*/results.json"))
    assert statuses == ["done", "done", "failed"]


def test_switching_the_synthetic_method_says_how_to_drop_the_old_methods_parameters(tmp_path, tiny_profile):
    from dpcore.experiment import Experiment

    switch = ["--set", "synthetic.method='el2n'"]
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(tmp_path / "runs"), *switch)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "unknown parameter(s) batch_real, iterations" in line and "--set 'synthetic.params={}'" in line
    fixed = Experiment.from_profile(str(tiny_profile), ["synthetic.method='el2n'", "synthetic.params={}",
                                                        "synthetic.params.seeds=2"], runs_dir=tmp_path / "runs")
    fixed.check()  # following the line: the experiment is valid
    assert fixed.cfg.synthetic.params == {"seeds": 2}


def test_dry_run_estimates_each_run_from_a_calibration_then_from_the_store_and_runs_nothing(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    base = ("--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs))
    first = dptui(*base, "--dry-run")
    assert first.returncode == 0, first.stderr
    assert "Estimate" in first.stdout and first.stdout.count("calibration (12 timed steps here)") == 3
    assert "experiment, 1 at once" in first.stdout and "est. peak MiB" in first.stdout
    text = " ".join(first.stdout.split())  # Rich wraps the notes
    assert "distilling the synthetic set: " in text and "(from calibration (2 and 42 iterations here))" in text
    assert not list(runs.glob("*/results.json")) and not list(runs.glob("cache/synthetic/*"))  # nothing ran or stayed
    assert dptui(*base).returncode == 0
    again = dptui(*base, "--dry-run")
    assert again.stdout.count("done (read from the store)") == 3
    other_seed = dptui(*base, "--dry-run", "--set", "run.seeds=[1]")
    assert other_seed.stdout.count("store (1 past run)") == 3  # same model, data, training: the store's times
    other_set = dptui(*base, "--dry-run", "--set", "synthetic.seed=5")  # a set to distil: as long as the last one
    assert "(from store (1 past set))" in " ".join(other_set.stdout.split())

"""Bad input is caught before any training: one line (what, where, how to fix), exit 2, the store untouched.
And a failure found inside a run stays with the runs it belongs to."""

import json
import pickle
import time

import numpy as np

from test_cli import dptui


def one_line_exit_2(proc, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def store_snapshot(runs):
    return {p.relative_to(runs): p.read_bytes() for p in runs.rglob("*") if p.is_file()}


def seeded_store(tmp_path):
    """A store with something already in it, which a refused experiment must leave exactly as it was."""
    runs = tmp_path / "runs"
    (runs / "0123456789abcdef").mkdir(parents=True)
    (runs / "0123456789abcdef" / "results.json").write_text('{"status": "done"}')
    return runs, store_snapshot(runs)


def test_a_bad_synthetic_source_is_refused_before_imp_trains(tmp_path, tiny_profile):
    runs, before = seeded_store(tmp_path)
    start = time.monotonic()
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs),
                 "--set", "synthetic.path='/etc/passwd'", "--set", "synthetic.method=''")
    one_line_exit_2(proc, "/etc/passwd")
    assert time.monotonic() - start < 120  # an upper bound for a loaded machine: no training happened
    assert store_snapshot(runs) == before


def test_a_corrupt_synthetic_folder_names_the_file(tmp_path, tiny_profile):
    bad = tmp_path / "syn"
    bad.mkdir()
    (bad / "images_best.pt").write_bytes(b"not a tensor file")
    (bad / "labels_best.pt").write_bytes(b"nope")
    runs, before = seeded_store(tmp_path)
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", f"synthetic.path={str(bad)!r}",
                 "--runs-dir", str(runs))
    one_line_exit_2(proc, "images_best.pt")
    assert store_snapshot(runs) == before


def test_a_synthetic_set_of_the_wrong_shape_is_refused(tmp_path, tiny_profile):
    import torch

    bad = tmp_path / "syn.pt"
    torch.save({"images": torch.zeros(8, 3, 32, 32), "labels": torch.arange(8) % 4}, bad)
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", f"synthetic.path={str(bad)!r}",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "syn.pt")


def test_an_unknown_distiller_and_a_too_large_ipc_are_refused(tmp_path, tiny_profile):
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "synthetic.method='dmm'",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "dmm", "[synthetic]")
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "synthetic.ipc=500",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "ipc", "lower ipc")


def test_a_device_that_does_not_exist_is_refused(tmp_path, tiny_profile):
    runs, before = seeded_store(tmp_path)
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "run.device='cuda:7'",
                 "--runs-dir", str(runs))
    one_line_exit_2(proc, "cuda:7")
    assert store_snapshot(runs) == before


def test_an_unwritable_run_store_is_refused(tmp_path, tiny_profile):
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", "/proc/1/forbidden")
    one_line_exit_2(proc, "/proc/1/forbidden", "--runs-dir")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = dptui("--headless", "--profile", str(tiny_profile), "--runs-dir", str(blocker / "runs"))
    one_line_exit_2(proc, "a-file", "--runs-dir")


def test_a_model_that_does_not_fit_the_images_is_refused(tmp_path, tiny_profile):
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "model.name='vgg11'",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "vgg11", "model.name", "too small")


def test_a_partial_cifar_folder_names_the_missing_files(tmp_path, tiny_profile):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    for name in ("data_batch_1", "data_batch_2"):
        (folder / name).write_bytes(pickle.dumps(batch))
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "data.dataset='cifar10'",
                 "--data-root", str(tmp_path / "data"), "--runs-dir", str(tmp_path / "runs"))
    err = one_line_exit_2(proc, "incomplete", "data_batch_3", "test_batch", "batches.meta")
    assert "data_batch_1" not in err.split("missing", 1)[1]


DIVERGING = """
[[synthetic.variants]]
name = "exploding"
method = "dm"
ipc = 2
params = {{ iterations = 4, batch_real = 16, lr_img = 1e38 }}

[[synthetic.variants]]
name = "subset"
method = "random-subset"
ipc = 2
"""


def test_a_diverging_source_fails_only_its_own_runs(tmp_path, tiny_profile):
    profile = tmp_path / "diverging.toml"
    text = tiny_profile.read_text().replace("seeds = [0]", "seeds = [0, 1]")
    head, tail = text.split("[prune]")
    profile.write_text(head + DIVERGING.format() + "[prune]" + tail.replace(
        'methods = ["imp", "distilled", "random"]', 'methods = ["imp", "distilled"]'))
    runs = tmp_path / "runs"
    proc = dptui("--headless", "--profile", str(profile), "--runs-dir", str(runs))
    assert proc.returncode == 1, proc.stderr
    results = [json.loads(p.read_text()) for p in runs.glob("*/results.json")]
    status = {(r["method"], r.get("variant", ""), r["seed"]): r["status"] for r in results}
    assert status == {("imp", "", 0): "done", ("imp", "", 1): "done",
                      ("distilled", "subset", 0): "done", ("distilled", "subset", 1): "done",
                      ("distilled", "exploding", 0): "failed", ("distilled", "exploding", 1): "failed"}
    errors = [r["error"] for r in results if r["status"] == "failed"]
    assert all(e.startswith("synthetic source 'dm ipc2': ") and "lr_img" in e for e in errors), errors
    assert "Failed runs" in proc.stdout and "lr_img" in proc.stdout
    (export,) = (runs / "experiments").iterdir()
    assert "lr_img" in (export / "summary.md").read_text()


def test_bad_pruning_at_init_settings_are_refused(tmp_path, tiny_profile):
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "prune.methods=['imp','snipp']",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "snipp", "prune.methods")
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "prune.synflow_iterations=0",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "prune.synflow_iterations")
    proc = dptui("--headless", "--profile", str(tiny_profile), "--set", "prune.score_batches=0",
                 "--runs-dir", str(tmp_path / "runs"))
    one_line_exit_2(proc, "prune.score_batches")
    assert not (tmp_path / "runs").exists() or not any(p for p in (tmp_path / "runs").iterdir() if len(p.name) == 16)

"""[run] log: TensorBoard and W&B sinks fed by the engine's events, read back with each tool's own reader.

One tiny IMP run logs to both; its TensorBoard event files (EventAccumulator) and its offline W&B run
(the run-*.wandb transaction log, decoded into wandb's own Record protobufs) must hold results.json's numbers.
W&B runs offline with HOME and every WANDB_* folder in tmp, so nothing touches the network or ~.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from conftest import TINY_PROFILE, make_npz
from dpcore.config import config_from_dict
from dpcore.experiment import Experiment, run_experiment
from dpcore.errors import ConfigError
from dpcore.events import RoundDone, RunStarted
from dpcore.profiles import load_profile

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")

LOGS = "run.log=['tensorboard', 'wandb']"


# -- readers ---------------------------------------------------------------------------------------
def tensorboard_run(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def tb_hparams(acc) -> dict:
    """The hparams of a run's session_start_info, as plain values."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def wandb_records(path: Path) -> list:
    """A W&B transaction log (run-<id>.wandb): a 7-byte header (":W&B", magic, version), then LevelDB-log
    records in 32 KiB blocks (crc32 of type + data, length, type FULL/FIRST/MIDDLE/LAST), each a Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, out, parts = 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's trailer: too short for a header
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zeroed tail (preallocated / unwritten)
            break
        payload = data[pos + 7:pos + 7 + length]
        assert zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += 7 + length
        if kind == 1:
            out.append(payload)
        elif kind == 2:
            parts = payload
        elif kind == 3:
            parts += payload
        elif kind == 4:
            out.append(parts + payload)
    records = []
    for raw in out:
        rec = pb.Record()
        rec.ParseFromString(raw)
        records.append(rec)
    return records


def item_value(item):
    if item.value_json:
        return json.loads(item.value_json)
    which = item.WhichOneof("value") if hasattr(item, "WhichOneof") else None
    return getattr(item, which) if which else None


def item_key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(records) -> list[dict]:
    rows = [{item_key(i): item_value(i) for i in r.history.item} for r in records if r.WhichOneof("record_type") == "history"]
    if not rows:  # older logs: the partial-history requests
        rows = [{item_key(i): item_value(i) for i in r.request.partial_history.item} for r in records
                if r.WhichOneof("record_type") == "request" and r.request.WhichOneof("request_type") == "partial_history"]
    return rows


def wandb_config(records) -> dict:
    config: dict = {}
    for r in records:
        kind = r.WhichOneof("record_type")
        updates = r.config.update if kind == "config" else r.run.config.update if kind == "run" else []
        for item in updates:
            v = json.loads(item.value_json)
            config[item_key(item)] = v["value"] if isinstance(v, dict) and set(v) <= {"value", "desc"} and "value" in v else v
    return config


def wandb_summary(records) -> dict:
    out: dict = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            out.update({item_key(i): json.loads(i.value_json) for i in r.summary.update})
    return out


def offline_log(run_dir: Path) -> Path:
    (found,) = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return found


def finished_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The offline run's records once its exit record is on disk (wandb-core writes the log after finish()
    returns, in its own process)."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(offline_log(run_dir))
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """W&B offline, its folders and HOME in tmp; the W&B service is shut down after the module."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for key in ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
            mp.delenv(key, raising=False)
        mp.setenv("HOME", str(home))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for key, sub in (("WANDB_DIR", "wandb"), ("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"),
                         ("WANDB_DATA_DIR", "data"), ("WANDB_ARTIFACT_DIR", "artifacts")):
            (home / sub).mkdir()
            mp.setenv(key, str(home / sub))
        yield home
        import wandb

        wandb.teardown()


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("profile")
    path = root / "tiny.toml"
    path.write_text(TINY_PROFILE.format(npz=make_npz(root / "tiny.npz")))
    return path


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory, profile, offline_env, one_thread):
    """One tiny IMP run (dense + 3 rounds, each validated) with run.log = tensorboard + wandb."""
    cfg, _ = load_profile(str(profile), ["prune.methods=['imp']", LOGS])
    runs = tmp_path_factory.mktemp("runs")
    seen = []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (res,) = run_experiment(cfg, runs, sink=seen.append)
    assert res.status == "done"
    assert not [str(w.message) for w in caught if str(w.message).startswith("run.log:")]  # no sink stopped
    run_dir = runs / res.run_id
    results = json.loads((run_dir / "results.json").read_text())
    return cfg, run_dir, results, seen, printed.getvalue()


# -- TensorBoard -----------------------------------------------------------------------------------
def test_tensorboard_holds_the_rounds_of_results_json(logged_run):
    _, run_dir, results, _, _ = logged_run
    acc = tensorboard_run(run_dir / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    rows = results["rounds"]
    assert [r["round"] for r in rows] == [1, 2, 3]
    for tag in ("sparsity", "val_acc", "inner_test_acc", "time_to_mask_s", "time_to_mask_validated_s", "inner_train_s"):
        assert tag in tags, tag
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        assert sorted(by_step) == [1, 2, 3], tag
        for row in rows:
            assert by_step[row["round"]] == pytest.approx(row[tag], rel=1e-6, abs=1e-9), (tag, row["round"])
    assert {e.step: e.value for e in acc.Scalars("dense/test_acc")} == {0: pytest.approx(results["dense"]["test_acc"])}


def test_tensorboard_has_per_epoch_losses_and_hparams(logged_run):
    cfg, run_dir, results, _, _ = logged_run
    acc = tensorboard_run(run_dir / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    for stage in ("dense", "validate"):  # IMP at k = 0 reuses each validation as the next inner training
        steps = [e.step for e in acc.Scalars(f"loss/{stage}")]
        assert steps and steps == sorted(set(steps)), (stage, steps)  # one series, strictly increasing
    validate_steps = [e.step for e in acc.Scalars("loss/validate")]
    assert max(validate_steps) == cfg.prune.rounds * cfg.train.epochs  # epochs over the rounds
    assert not any(t.startswith(("loss/prune", "loss/distill")) for t in tags)
    hp = tb_hparams(acc)
    assert hp["prune.rounds"] == 3 and hp["train.lr"] == pytest.approx(0.002) and hp["data.dataset"] == "npz"
    assert hp["run.method"] == "imp" and hp["run.seed"] == 0 and hp["run.run_id"] == results["run_id"]
    assert json.loads(hp["run.log"]) == ["tensorboard", "wandb"]
    best = max(r["val_acc"] for r in results["rounds"])
    assert [e.value for e in acc.Scalars("hparams/best_val_acc")] == [pytest.approx(best)]
    assert [e.value for e in acc.Scalars("hparams/final_sparsity")] == [pytest.approx(results["rounds"][-1]["sparsity"])]


# -- W&B -------------------------------------------------------------------------------------------
def test_wandb_offline_run_holds_the_rounds_and_the_config(logged_run):
    _, run_dir, results, _, printed = logged_run
    log = offline_log(run_dir)
    assert log.name == f"run-{results['run_id']}.wandb"
    records = finished_records(run_dir)
    history = wandb_history(records)
    rounds = {h["round"]: h for h in history if "sparsity" in h}
    assert sorted(rounds) == [1, 2, 3]
    for row in results["rounds"]:
        logged = rounds[row["round"]]
        for key in ("sparsity", "val_acc", "inner_test_acc", "time_to_mask_s"):
            assert logged[key] == pytest.approx(row[key], rel=1e-12), (key, row["round"])
    losses = [h for h in history if "loss/validate" in h]
    assert losses and all("epoch/validate" in h for h in losses)  # each loss against its own step metric
    steps = [h["epoch/validate"] for h in losses]
    assert steps == sorted(set(steps))
    assert any(h.get("dense/test_acc") == pytest.approx(results["dense"]["test_acc"]) for h in history)
    config = wandb_config(records)
    assert config["prune"]["rounds"] == 3 and config["train"]["lr"] == pytest.approx(0.002)
    assert config["run"]["method"] == "imp" and config["run"]["run_id"] == results["run_id"]
    assert config["run"]["log"] == ["tensorboard", "wandb"]
    summary = wandb_summary(records)
    assert summary["best_val_acc"] == pytest.approx(max(r["val_acc"] for r in results["rounds"]))
    assert summary["final_sparsity"] == pytest.approx(results["rounds"][-1]["sparsity"])
    exits = [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"]
    assert exits == [0]  # finished, once
    assert "wandb" not in printed.lower()  # nothing printed


def test_the_engine_events_are_unchanged_by_the_sinks(logged_run):
    _, _, results, seen, _ = logged_run
    assert isinstance(seen[0], RunStarted)
    assert [e.row["round"] for e in seen if isinstance(e, RoundDone)] == [1, 2, 3]


# -- identity, validation, failure ---------------------------------------------------------------------
def test_run_log_is_not_part_of_the_run_id(profile, logged_run):
    cfg, _ = load_profile(str(profile))
    logged, _ = load_profile(str(profile), [LOGS])
    cpu = torch.device("cpu")
    plain, with_log = Experiment(cfg, device=cpu.type).plans, Experiment(logged, device=cpu.type).plans
    assert [p.run_id for p in plain] == [p.run_id for p in with_log]
    assert [p.identity for p in plain] == [p.identity for p in with_log]
    _, run_dir, _, _, _ = logged_run  # the logged run's folder is the id it has without run.log
    imp = next(p for p in plain if p.method == "imp")
    assert run_dir.name == imp.run_id


def test_unknown_sink_is_one_config_line():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"run": {"log": ["tensorbord"]}}, where="p.toml")
    text = str(err.value)
    assert "\n" not in text and "'run.log'" in text and "'tensorbord'" in text
    assert "'tensorboard', 'wandb'" in text and "did you mean 'tensorboard'" in text
    with pytest.raises(ConfigError, match="must not repeat"):
        config_from_dict({"run": {"log": ["wandb", "wandb"]}})
    assert config_from_dict({}).run.log == []


def test_unknown_sink_exits_2_with_one_line_from_the_cli(tmp_path, profile):
    env = {**os.environ, "COLUMNS": "160", "OMP_NUM_THREADS": "1"}
    env.pop("DPTUI_RUNS_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "dptui", "--headless", "--profile", str(profile), "--set",
                           "run.log=['tensorboard', 'tb']", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "'run.log'" in err and "'tb'" in err and "'tensorboard', 'wandb'" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*/events.jsonl"))


def test_a_missing_package_is_one_line_before_any_training(monkeypatch, profile, tmp_path):
    import importlib.util

    from dpcore import sinks
    from dpcore.validate import check_experiment

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg, _ = load_profile(str(profile), [LOGS])
    with pytest.raises(ConfigError) as err:
        sinks.check_log_sinks(cfg)
    assert str(err.value) == ("run.log includes 'wandb' but the wandb package is not installed; "
                              "pip install 'dptui[wandb]'")
    with pytest.raises(ConfigError, match="wandb package is not installed"):
        check_experiment(cfg, tmp_path / "runs", None)
    sinks.check_log_sinks(replace(cfg, run=replace(cfg.run, log=["tensorboard"])))  # that one is installed


def test_a_failing_sink_warns_once_and_the_run_goes_on():
    from dpcore.sinks import LogSink

    class Broken(LogSink):
        name = "broken"
        calls = 0

        def handle(self, event):
            Broken.calls += 1
            raise OSError("disk full")

    s = Broken()
    with pytest.warns(RuntimeWarning, match="the broken sink stopped logging .OSError: disk full"):
        s(RunStarted(run_id="x", experiment="e", method="imp", seed=0, dataset="d", model="m", device="cpu",
                     rounds=1, resumed_after=0))
    s(RunStarted(run_id="x", experiment="e", method="imp", seed=0, dataset="d", model="m", device="cpu",
                 rounds=1, resumed_after=0))
    s.close()
    s.close()
    assert Broken.calls == 1


def test_a_failed_run_closes_its_sinks(monkeypatch, tmp_path, profile, offline_env):
    import dpcore.engine as engine
    import dpcore.sinks as sinks

    made = []
    real_make = sinks.make_log_sinks

    def recording(*args, **kwargs):
        out = real_make(*args, **kwargs)
        made.extend(out)
        return out

    def broken(self, rows):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(sinks, "make_log_sinks", recording)
    monkeypatch.setattr(engine.Run, "loop", broken)
    cfg, _ = load_profile(str(profile), ["prune.methods=['random']", LOGS])
    with contextlib.redirect_stdout(io.StringIO()):
        (res,) = run_experiment(cfg, tmp_path / "runs")
    assert res.status == "failed"
    assert [type(s).__name__ for s in made] == ["TensorBoardSink", "WandbSink"] and all(s.closed for s in made)
    run_dir = tmp_path / "runs" / res.run_id
    assert "_hparams_/session_start_info" in tensorboard_run(run_dir / "tensorboard").PluginTagToContent("hparams")
    records = finished_records(run_dir)
    assert [r.exit.exit_code for r in records if r.WhichOneof("record_type") == "exit"] == [1]
    assert wandb_summary(records)["status"] == "failed"


def test_a_finished_run_run_again_writes_no_new_logs(logged_run):
    cfg, run_dir, _, _, _ = logged_run
    before = sorted(p.name for p in (run_dir / "tensorboard").iterdir())
    (res,) = run_experiment(cfg, run_dir.parent)
    assert res.status == "done"
    assert sorted(p.name for p in (run_dir / "tensorboard").iterdir()) == before
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1

"""The dashboard's plain-Python parts: following events, folding them, reconciling a run's status."""

import json
from pathlib import Path

import pytest

from app_fixtures import DIST1, IMP0, demo_store, write_run
from dpcore.events import EpochProgress, RoundDone, RunStarted
from dpcore.profiles import parse_override
from dpcore.results import RoundRow, RunResults
from dptui.app.follow import EventFollower, Mailbox, RunFollower, StoreScanner
from dptui.app.launch_screen import toml_literal
from dptui.app.model import RunLive, build_view, effective_status, runs_listing
from dptui.launches.launcher import LaunchEntry, last_error
from dptui.launches.logs import tail_lines


def line(ev) -> str:
    return json.dumps(ev.to_dict()) + "\n"


def test_follower_reads_only_complete_lines_and_picks_up_the_rest(tmp_path):
    path = tmp_path / "events.jsonl"
    f = EventFollower(path)
    assert f.read_new() == []  # no file yet
    start = line(RunStarted("r", t=1.0, experiment="e", method="imp", seed=0, dataset="d", model="m",
                            device="cpu", rounds=3, resumed_after=0))
    progress = line(EpochProgress("r", t=2.0, stage="inner", round=1, epoch=3, epochs=10, loss=0.5,
                                  elapsed_s=1.0, eta_s=2.0))
    path.write_text(start + progress[:20])  # the writer is in the middle of a line
    assert [e.kind for e in f.read_new()] == ["run_started"]
    with open(path, "a") as fh:
        fh.write(progress[20:] + "not json\n")
    evs = f.read_new()
    assert [e.kind for e in evs] == ["epoch_progress"] and evs[0].epoch == 3
    assert f.bad_lines == 1
    path.write_text(start)  # replaced by a shorter file: start over
    assert [e.kind for e in f.read_new()] == ["run_started"]


def test_live_state_folds_events_and_a_resume_forgets_unfinished_rounds():
    live = RunLive("r")
    live.fold(RunStarted("r", t=10.0, experiment="e", method="imp", seed=1, dataset="d", model="m", device="cpu",
                         rounds=3, resumed_after=0))
    live.fold(RoundDone("r", t=12.0, row={"round": 1, "sparsity": 0.2}))
    live.fold(RoundDone("r", t=13.0, row={"round": 2, "sparsity": 0.36}))
    live.fold(EpochProgress("r", t=14.0, stage="inner", round=3, epoch=2, epochs=8, loss=float("nan"),
                            elapsed_s=1.0, eta_s=3.0))
    assert live.status == "running" and sorted(live.rows) == [1, 2]
    assert (live.stage, live.epoch, live.epochs, live.eta_s, live.loss) == ("inner", 2, 8, 3.0, None)
    assert live.log[0].startswith("[    0.0s] imp seed 1") and "round 2 done: sparsity 36.00%" in live.log[-1]
    live.fold(RunStarted("r", t=20.0, experiment="e", method="imp", seed=1, dataset="d", model="m", device="cpu",
                         rounds=3, resumed_after=1))
    assert sorted(live.rows) == [1] and "resuming after round 1" in live.log[-1]


def entry(state, **kw):
    return LaunchEntry("r", Path("/x"), {}, state, 0.0, ["cpu"], **kw)


@pytest.mark.parametrize("results, live_status, ent, expect", [
    ({"status": "done"}, None, None, ("done", None)),
    ({"status": "running"}, None, None, ("running", None)),  # not launched from the app: trust the file
    (None, None, entry("queued", runner_alive=True), ("queued", None)),
    (None, None, entry("queued", runner_alive=False), ("stalled", None)),
    (None, None, entry("queued", runner_alive=True, cancel_requested=True), ("cancelled", None)),
    ({"status": "stopped"}, "running", entry("running", pid_alive=True, runner_alive=True), ("running", None)),
    ({"status": "running"}, "running", entry("running", pid_alive=True, cancel_requested=True), ("stopping", None)),
    ({"status": "running"}, "running", entry("running", pid_alive=False, runner_alive=False), ("interrupted", None)),
    ({"status": "running"}, "running", entry("exited", rc=-9),
     ("failed", "the run's process was killed by signal 9 (out of memory?)")),
    (None, None, entry("exited", rc=2, error="data path '/nowhere' does not exist"),
     ("failed", "data path '/nowhere' does not exist")),
    ({"status": "failed", "error": "RuntimeError: boom"}, "failed", entry("exited", rc=1), ("failed", "RuntimeError: boom")),
    ({"status": "stopped"}, "stopped", entry("exited", rc=130), ("stopped", None)),
    ({"status": "running"}, "running", entry("exited", rc=-2, cancel_requested=True), ("stopped", None)),
])
def test_effective_status_reconciles_files_and_processes(results, live_status, ent, expect):
    live = None
    if live_status:
        live = RunLive("r")
        live.status = live_status
        live.error = (results or {}).get("error")
    assert effective_status(None if results is None else RunResults.from_json(results), live, ent) == expect


def test_mailbox_coalesces_a_burst_into_one_message():
    box = Mailbox()
    posts = [box.put("k", i) for i in range(100)]
    assert posts.count(True) == 1 and box.take("k") == 99 and box.take("k") is None
    assert box.put("k", 1) is True


def test_scanner_rereads_results_only_when_they_change(tmp_path, monkeypatch):
    demo_store(tmp_path)
    scanner = StoreScanner(tmp_path)
    first = scanner.scan()
    assert len(first.results) == 6 and first.results[IMP0].status == "done"
    reads = []
    real = StoreScanner._read
    monkeypatch.setattr(StoreScanner, "_read", staticmethod(lambda p: reads.append(p) or real(p)))
    again = scanner.scan()
    assert reads == [] and again.signature == first.signature and again.results[IMP0] is first.results[IMP0]
    write_run(tmp_path, DIST1, method="distilled", seed=1, status="done", rounds=3)
    third = scanner.scan()
    assert [p.parent.name for p in reads] == [DIST1] and third.results[DIST1].status == "done"
    assert third.signature != first.signature


def test_run_follower_tails_the_process_log(tmp_path):
    write_run(tmp_path, IMP0, method="imp")
    log = tmp_path / "run.log"
    log.write_text("line 1\nline 2\n")
    f = RunFollower(tmp_path / IMP0, IMP0, log)
    assert f.poll() is True
    live, tail = f.snapshot()
    assert live.status == "done" and len(live.rows) == 3 and tail == ["line 1", "line 2"]
    assert f.poll() is False
    assert tail_lines(log, 1) == ["line 2"]


def test_runs_listing_is_a_row_model_table(tmp_path):
    demo_store(tmp_path)
    snap = StoreScanner(tmp_path).scan()
    views = [build_view(k, v, None, None) for k, v in snap.results.items()]
    table = runs_listing(views)
    row = next(r for r in table.rows if r["run_id"] == IMP0)
    assert row["progress"] == "3/3" and row["best_val"] == max(r.val_acc for r in snap.results[IMP0].rounds)
    assert abs(row["sparsity"] - (1 - 0.8 ** 3)) < 1e-9


@pytest.mark.parametrize("value", [3, 0.0012, True, "adam", "", "a b", [0, 1], ["imp", "distilled"],
                                   {"width": 64, "norm": "instance"}])
def test_form_values_read_back_as_typed(value):
    text = toml_literal(value)
    assert parse_override(f"x.y={text}")[1] == value


def test_last_error_finds_the_cli_error_line_or_the_traceback(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("starting\nerror: data.path '/nowhere/x.npz' does not exist\n")
    assert last_error(log) == "data.path '/nowhere/x.npz' does not exist"
    log.write_text("Traceback (most recent call last):\n  File \"x\", line 1\nMemoryError: out of memory\n")
    assert last_error(log) == "MemoryError: out of memory"
    log.write_text("nothing to see\n")
    assert last_error(log) is None


def test_override_box_splits_like_the_command_line_without_a_shell():
    from dptui.app.launch_screen import split_overrides
    from dpcore.errors import DPError

    assert split_overrides('prune.rounds=3  prune.methods=["imp", "random"] experiment.description="a b"') == \
        ["prune.rounds=3", 'prune.methods=["imp", "random"]', 'experiment.description="a b"']
    assert [parse_override(o)[1] for o in split_overrides('run.seeds=[0, 1] data.path="x y.npz"')] == \
        [[0, 1], "x y.npz"]
    with pytest.raises(DPError, match="unclosed"):
        split_overrides("prune.methods=[imp")


def test_instability_table_is_the_reports_table_of_the_well_formed_entries():
    from app_fixtures import instability_curves
    from dpcore.summary import instability_table as report_table
    from dptui.app.model import instability_items, instability_table

    good = instability_curves()
    res = {"run_id": "r", "method": "distilled", "seed": 0, "rounds": [],
           "instability": good + [{"round": 9, "alphas": [0, 1], "test_acc": [0.5]},  # lengths differ
                                  {**good[0], "round": 4, "rewind": None}]}  # no rewind point
    typed = RunResults.from_json(res)
    assert [(i["round"], i["rewind_text"]) for i in instability_items(typed)] == [(1, "k=0"), (2, "k=0"), (3, "k=0")]
    table = instability_table(typed)
    assert table.rows == report_table([RunResults.from_json({**res, "instability": good})]).rows
    assert [(r["round"], r["rewind"], round(r["instability"].mean, 2)) for r in table.rows] == \
        [(1, "k=0", 0.02), (2, "k=0", 0.04), (3, "k=0", 0.06)]


def test_an_analysis_event_is_logged_from_its_typed_fields():
    from dpcore.events import AnalysisDone, event_from_dict

    ev = event_from_dict(AnalysisDone("a", t=3.0, analysis="instability", round=2,
                                      result={"instability": 0.0123, "sparsity": 0.36}).to_dict())
    assert isinstance(ev, AnalysisDone)
    live = RunLive("a")
    live.fold(ev)
    assert live.log[-1].endswith("analysis instability done (round 2): instability 1.23%")


def test_a_variant_run_is_listed_and_logged_with_its_synthetic_source():
    live = RunLive("v")
    live.fold(RunStarted("v", t=1.0, experiment="e", method="distilled", seed=0, dataset="d", model="m",
                         device="cpu", rounds=2, resumed_after=0, variant="gm ipc10"))
    live.fold(RoundDone("v", t=2.0, row={"round": 1, "sparsity": 0.2, "val_acc": 0.9, "time_to_mask_s": 1.0}))
    view = build_view("v", None, live, None)
    assert view.group == "distilled gm ipc10" and view.label == "e distilled gm ipc10 s0"
    assert live.log[0].startswith("[    0.0s] distilled gm ipc10 seed 0")
    (row,) = runs_listing([view]).rows
    assert row["method"] == "distilled gm ipc10"
    assert view.results_for_tables().variant == "gm ipc10"
    assert view.rows == [RoundRow(round=1, sparsity=0.2, val_acc=0.9, time_to_mask_s=1.0)]  # the event's row, typed


# -- ETA: a run's time left and its experiment's, from its own events (their times: no clock) ----------------

def folded(*events) -> RunLive:
    live = RunLive("r")
    for ev in events:
        live.fold(ev)
    return live


def started(t: float = 0.0, resumed_after: int = 0) -> RunStarted:
    return RunStarted("r", t=t, experiment="e", method="imp", seed=0, dataset="d", model="m", device="cpu",
                      rounds=3, resumed_after=resumed_after)


def round_events(r: int, start: float, end: float) -> list:
    from app_fixtures import round_row
    from dpcore.events import RoundStarted

    return [RoundStarted("r", t=start, round=r, rounds=3, target_sparsity=1 - 0.8 ** r),
            RoundDone("r", t=end, row=round_row("imp", r))]


def progress(t: float, eta_s: float, r: int = 3) -> EpochProgress:
    return EpochProgress("r", t=t, stage="inner", round=r, epoch=1, epochs=4, loss=0.5, elapsed_s=1.0, eta_s=eta_s)


def test_a_running_runs_eta_is_its_rounds_to_go_at_its_mean_round_time_less_the_round_in_flight():
    from dpcore.events import RoundStarted, RunDone
    from dptui.app.model import eta_text, round_wall_s, run_eta

    # rounds 1 and 2 took 20 s and 40 s (RoundStarted to RoundDone); round 3 started at t=70
    live = folded(started(), *round_events(1, 10.0, 30.0), *round_events(2, 30.0, 70.0),
                  RoundStarted("r", t=70.0, round=3, rounds=3, target_sparsity=0.488), progress(80.0, eta_s=5.0))
    view = build_view("r", None, live, None)
    assert view.status == "running" and round_wall_s(view) == 30.0
    assert run_eta(view) == 20.0  # one round to go at 30 s, 10 s of it done
    assert eta_text(view) == "run: 20.0s left (2/3 rounds, 30.0s/round)"
    assert runs_listing([view]).rows[0]["eta"] == 20.0
    live.fold(progress(110.0, eta_s=8.0))  # the round runs long: never below what its stage says is left
    assert run_eta(build_view("r", None, live, None)) == 8.0
    live.fold(RunDone("r", t=120.0, status="done", rounds_done=3, wall_s=120.0))
    done = build_view("r", None, live, None)
    assert run_eta(done) is None and eta_text(done) == ""


def test_a_resumed_run_forgets_the_round_times_of_the_rounds_it_redoes():
    from dptui.app.model import round_wall_s

    live = folded(started(), *round_events(1, 10.0, 30.0), *round_events(2, 30.0, 70.0), started(100.0, 1))
    assert live.round_s == {1: 20.0} and round_wall_s(build_view("r", None, live, None)) == 20.0


def test_before_its_first_round_ends_a_run_counts_down_its_launchs_estimate(tmp_path):
    from app_fixtures import launch_entry
    from dpcore.events import StageStarted
    from dptui.app.model import eta_text, run_eta

    info = {"experiment": "e", "method": "imp", "seed": 0, "dataset": "d", "model": "m", "rounds": 3,
            "est_wall_s": 100.0, "places": 2}
    queued = launch_entry("r", tmp_path, state="queued")
    queued.info = info
    view = build_view("r", None, None, queued)
    assert view.status == "queued" and run_eta(view) == 100.0
    assert eta_text(view) == "run: 100.0s left (0/3 rounds, its launch's estimate)"
    running = launch_entry("r", tmp_path)
    running.info = info
    live = folded(started(10.0), StageStarted("r", t=11.0, stage="dense", round=0), progress(35.0, 3.0, r=0))
    assert run_eta(build_view("r", None, live, running)) == 75.0  # 25 s since it started
    running.info = {k: v for k, v in info.items() if k != "est_wall_s"}  # not estimated (or not launched here)
    view = build_view("r", None, live, running)
    assert run_eta(view) is None and eta_text(view) == "run: time left unknown until a round ends"


def test_without_its_events_a_run_uses_the_round_times_its_rows_record():
    from app_fixtures import round_row
    from dpcore.estimate import mean_round_s
    from dptui.app.model import round_wall_s, run_eta

    rows = [round_row("distilled", r) for r in (1, 2)]
    view = build_view("r", {"run_id": "r", "method": "distilled", "seed": 0, "status": "running",
                            "rounds_planned": 3, "rounds": rows, "dense": {"test_acc": 0.9, "train_s": 10.8}}, None, None)
    per = sum(r["inner_train_s"] + r["prune_s"] + r["val_train_s"] for r in rows) / 2
    assert round_wall_s(view) == pytest.approx(per) and run_eta(view) == pytest.approx(per)  # 1 round to go
    imp = [RoundRow.from_json(round_row("imp", r)) for r in (1, 2)]  # round 2's inner training is round 1's val
    assert mean_round_s(10.8, imp) == pytest.approx((11.0 + 0.05 + 12.0 + 0.05 + 13.0) / 2)


def test_an_experiments_time_left_packs_its_active_runs_onto_its_launchs_places(tmp_path):
    from app_fixtures import launch_entry
    from dpcore.estimate import pack
    from dpcore.events import RoundStarted
    from dptui.app.model import experiment_left, experiments_left

    assert pack([30.0, 20.0, 10.0], 2) == 30.0 and pack([30.0, 20.0, 10.0], 1) == 60.0 and pack([], 3) == 0.0

    def entry(run_id, state, **info):
        e = launch_entry(run_id, tmp_path, state=state)
        e.info = {"experiment": "e", "dataset": "d", "model": "m", "method": "imp", "seed": 0, "rounds": 3,
                  "places": 2, **info}
        return e

    live = folded(started(), *round_events(1, 10.0, 30.0), *round_events(2, 30.0, 70.0),
                  RoundStarted("r", t=70.0, round=3, rounds=3, target_sparsity=0.488), progress(80.0, eta_s=5.0))
    running = build_view("r", None, live, entry("r", "running"))  # 20 s left
    estimated = build_view("q", None, None, entry("q", "queued", est_wall_s=100.0))
    unknown = build_view("u", None, None, entry("u", "queued"))
    done = build_view("d", {"run_id": "d", "experiment": "e", "status": "done"}, None, None)
    left = experiment_left([running, estimated, unknown, done])
    assert (left.wall_s, left.places, left.unknown) == (100.0, 2, 1)  # 100 s and 20 s side by side
    assert left.text() == "e: 100.0s left (+1 run without an ETA), 2 at once"
    one_place = [build_view("r", None, live, entry("r", "running", places=1)),
                 build_view("q", None, None, entry("q", "queued", est_wall_s=100.0, places=1))]
    assert experiment_left(one_place).wall_s == 120.0  # one after the other
    cli = build_view("r", None, live, None)  # not launched from the dashboard: as many at once as run now
    assert experiment_left([cli]).text() == "e: 20.0s left, 1 at once"
    assert experiment_left([done]) is None and experiments_left([done]) == []
    assert [x.text() for x in experiments_left([running, unknown])] == ["e: 20.0s left (+1 run without an ETA), 2 at once"]
    assert experiment_left([unknown]).text() == "e: time left unknown"

"""Run detail: live rounds, epoch progress with ETA, charts, log tail, errors, a burst of events, bindings."""

import json

from textual.widgets import Log, ProgressBar, Sparkline, Static

from app_fixtures import (DIST1, IMP0, IMP1, RAND0, demo_store, launch_entry, make_test_app, on_screen,
                          round_row, run_async, screen_text, settled, wait_for)
from dpcore.events import EpochProgress, RoundDone, RunDone
from dpcore.results import load_results
from dpcore.summary import rounds_table
from dptui.app.widgets import RowTable
from dptui.export import to_csv, to_markdown


def append(path, *events, raw=""):
    """Append the events (and ``raw`` text) in one write, as the engine appends a line."""
    text = "".join(json.dumps(ev.to_dict()) + "\n" for ev in events) + raw
    with open(path, "a") as f:
        f.write(text)


def detail_shows(app, run_id) -> bool:
    """Run detail of ``run_id`` has drawn everything the app knows of it, its events included."""
    return settled(app, "DetailScreen") and app.screen.run_id == run_id and run_id in app.lives


async def open_detail(app, pilot, run_id):
    await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the store to load")
    app.open_detail(run_id)
    await wait_for(pilot, lambda: detail_shows(app, run_id), what="the detail screen")


@run_async
async def test_a_running_run_shows_rounds_progress_eta_charts_and_log(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_detail(app, pilot, DIST1)
        await wait_for(pilot, lambda: "ETA 12.5s" in screen_text(app), what="the epoch in flight")
        text = screen_text(app)
        assert "distilled seed 1" in text and "running" in text and "round 2/3" in text
        assert "round 3 · inner · epoch 150/300 · loss 0.250" in text
        bar = app.screen.query_one("#epoch", ProgressBar)
        assert (bar.progress, bar.total) == (150, 300)
        assert app.screen.query_one(RowTable).keys == ["dense-0", "distilled-1", "distilled-2"]
        assert len(app.screen.query_one("#val-spark", Sparkline).data) == 2
        assert "inner acc (synthetic training): 95.10% → 93.30%" in text
        assert "syn ████" in text  # the synthetic-vs-real time bars
        assert any("round 2 done" in line for line in app.screen.query_one(Log).lines)


@run_async
async def test_rounds_arrive_live_and_the_run_finishes(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_detail(app, pilot, DIST1)
        events = runs / DIST1 / "events.jsonl"
        row = round_row("distilled", 3, seed=1)
        # A half-written line first: nothing breaks, the rest arrives with the next write.
        full = json.dumps(RoundDone(DIST1, t=2e9, row=row).to_dict()) + "\n"
        append(events, raw=full[:30])
        follower = app.followers[DIST1].events
        await wait_for(pilot, lambda: follower.partial == full[:30].encode() and detail_shows(app, DIST1),
                       what="the follower to read the half line")
        assert app.screen.query_one(RowTable).keys[-1] == "distilled-2" and follower.bad_lines == 0
        append(events, raw=full[30:])
        await wait_for(pilot, lambda: app.screen.query_one(RowTable).keys[-1] == "distilled-3", what="round 3")
        res = json.loads((runs / DIST1 / "results.json").read_text())
        res["rounds"].append(row)
        res["status"] = "done"
        (runs / DIST1 / "results.json").write_text(json.dumps(res))
        append(events, RunDone(DIST1, t=2e9 + 1, status="done", rounds_done=3, wall_s=50.0))
        await wait_for(pilot, lambda: "done" in str(app.screen.query_one("#title", Static).render())
                       and detail_shows(app, DIST1) and app.views[DIST1].status == "done", what="the run to finish")
        await wait_for(pilot, lambda: "round 3/3" in screen_text(app), what="round 3/3 on the screen")
        assert "ETA" not in screen_text(app)


@run_async
async def test_a_burst_of_progress_events_ends_showing_its_last_epoch(tmp_path):
    """A burst of events lands as its last state (how few updates it costs is the Mailbox's test, in
    test_app_model: a count of updates here would depend on when the follower happens to read)."""
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs, follow_s=0.2)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_detail(app, pilot, DIST1)
        burst = [EpochProgress(DIST1, t=2e9 + i, stage="inner", round=3, epoch=i, epochs=2000, loss=0.1,
                               elapsed_s=i / 100, eta_s=(2000 - i) / 100) for i in range(1, 2001)]
        append(runs / DIST1 / "events.jsonl", *burst)
        bar = app.screen.query_one("#epoch", ProgressBar)
        await wait_for(pilot, lambda: "round 3 · inner · epoch 2000/2000" in screen_text(app) and detail_shows(app, DIST1)
                       and (bar.progress, bar.total) == (2000, 2000), what="the burst's last epoch on the screen")
        assert "epoch 1999/2000" not in screen_text(app)


@run_async
async def test_a_failed_run_shows_its_error(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_detail(app, pilot, IMP1)
        error = str(app.screen.query_one("#error", Static).render())
        assert "error: RuntimeError: CUDA out of memory" in error
        await wait_for(pilot, lambda: "failed" in screen_text(app), what="the failed status on the screen")


@run_async
async def test_a_run_that_failed_before_starting_shows_the_error_and_its_log(tmp_path):
    runs = tmp_path / "runs"
    log = tmp_path / "run.log"
    log.write_text("error: data.path '/nowhere/x.npz' does not exist\n")
    rid = "1" * 16
    app = make_test_app(runs)
    e = launch_entry(rid, runs, state="exited", rc=2, runner_alive=False, log_path=log,
                     error="data.path '/nowhere/x.npz' does not exist")
    e.info = {"experiment": "tiny", "method": "imp", "seed": 0, "rounds": 3}
    app.launcher.fake_entries = {rid: e}
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the store to load")
        app.open_detail(rid)
        await wait_for(pilot, lambda: on_screen(app, "DetailScreen") and app.screen.query_one(Log).lines and
                       "does not exist" in app.screen.query_one(Log).lines[-1], what="the run's log")
        assert "error: data.path '/nowhere/x.npz' does not exist" in str(app.screen.query_one("#error", Static).render())
        assert app.views[rid].status == "failed"


@run_async
async def test_detail_bindings(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    app.launcher.fake_entries = {DIST1: launch_entry(DIST1, runs)}
    async with app.run_test(size=(100, 30)) as pilot:
        await open_detail(app, pilot, IMP0)
        results = load_results(runs / IMP0)
        out = runs / "exports" / f"rounds-demo-imp-s0-{IMP0}"
        for key, suffix in (("m", ".md"), ("c", ".csv")):
            await pilot.press("e")
            await wait_for(pilot, lambda: on_screen(app, "ExportModal"), what="the export dialog")
            await pilot.press(key)
            await wait_for(pilot, lambda: out.with_suffix(suffix).exists() and on_screen(app, "DetailScreen"),
                           what=f"the {suffix} export")
        # The same table the headless exports write for this run.
        assert out.with_suffix(".md").read_text() == to_markdown([rounds_table([results])])
        assert out.with_suffix(".csv").read_text() == to_csv(rounds_table([results]))
        await pilot.press("p")
        await wait_for(pilot, lambda: on_screen(app, "CompareScreen"), what="Compare")
        assert RAND0 in app.screen.run_ids
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "DetailScreen"), what="back to Run detail")
        await pilot.press("i")
        await wait_for(pilot, lambda: on_screen(app, "InterpolationScreen"), what="Interpolation")
        assert app.screen.run_id == IMP0
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "DetailScreen"), what="back to Run detail")
        await pilot.press("r")  # done: nothing to resume
        assert app.launcher.calls == []
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")
        app.open_detail(DIST1)
        await wait_for(pilot, lambda: detail_shows(app, DIST1), what="distilled s1's detail")
        await pilot.press("c")
        await wait_for(pilot, lambda: on_screen(app, "ConfirmModal"), what="the cancel question")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.launcher.calls, what="the cancel")
        assert app.launcher.calls == [("cancel", DIST1)]
        await wait_for(pilot, lambda: on_screen(app, "DetailScreen"), what="back to Run detail")
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")
        assert DIST1 in app.watched or app.views[DIST1].active  # still followed: it is running
        assert IMP0 not in app.watched


@run_async
async def test_runs_and_run_detail_show_the_eta_of_a_running_run_and_of_its_experiment(tmp_path):
    from dptui.app.model import RUN_COLUMNS

    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    queued = "1" * 16  # launched with an estimate of 60 s, two runs at once, not started yet
    entry = launch_entry(queued, runs, state="queued")
    entry.info = {"experiment": "demo", "method": "imp", "seed": 2, "dataset": "mnist-embedded",
                  "model": "lenet-300-100", "device": "cpu", "rounds": 3, "est_wall_s": 60.0, "places": 2}
    app.launcher.fake_entries = {queued: entry}
    eta = 1 + [c.key for c in RUN_COLUMNS].index("eta")  # after the mark column

    def eta_cell(run_id) -> str:
        return str(app.screen.query_one(RowTable).get_row(run_id)[eta]).strip()

    async with app.run_test(size=(100, 30)) as pilot:
        # distilled s1: round 3 of 3 in flight, its epoch saying 12.5 s are left (its rounds took 4 s each)
        await wait_for(pilot, lambda: settled(app, "RunsScreen") and queued in app.screen.query_one(RowTable).keys
                       and DIST1 in app.lives and eta_cell(DIST1) == "12.5", what="distilled s1's ETA")
        assert eta_cell(queued) == "60.0" and eta_cell(IMP0) == "-"
        assert "demo: 60.0s left, 2 at once" in screen_text(app)  # 12.5 s and 60 s side by side
        app.open_detail(DIST1)
        await wait_for(pilot, lambda: detail_shows(app, DIST1), what="the detail screen")
        assert "run: 12.5s left (2/3 rounds, 4.0s/round) · demo: 60.0s left, 2 at once" in screen_text(app)
        app.pop_screen()
        app.open_detail(IMP0)  # done: no ETA line
        await wait_for(pilot, lambda: detail_shows(app, IMP0), what="a finished run's detail")
        assert not app.screen.query_one("#run-eta", Static).display and "left" not in screen_text(app)

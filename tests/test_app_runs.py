"""Runs screen: Pilot tests on a fake store (every binding), live updates, export."""

import json

from app_fixtures import (CIFAR, DIST0, DIST1, IMP0, IMP1, RAND0, demo_store, launch_entry, make_test_app,
                          run_async, screen_text, wait_for, write_run)
from dptui.app.widgets import RowTable
from dptui.export import to_csv, to_html, to_markdown

ORDER = [CIFAR, IMP0, IMP1, DIST0, DIST1, RAND0]  # experiment, method order, seed


async def started(app, pilot):
    await wait_for(pilot, lambda: app.loaded and len(app.screen.query_one(RowTable).keys) == len(app.views),
                   what="the store to load")


def cells_of(app, run_id) -> list[str]:
    return [str(c).strip() for c in table(app).get_row(run_id)]


def table(app) -> RowTable:
    return app.screen.query_one(RowTable)


@run_async
async def test_lists_every_run_with_its_state_and_updates_live(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        assert table(app).keys == ORDER
        text = screen_text(app)
        assert "6 runs · 1 running · 1 failed" in text
        cells = {k: cells_of(app, k) for k in ORDER}
        assert cells[DIST1][1:7] == ["demo", "distilled", "1", "running", "2/3", "36.00"]
        assert cells[IMP1][4] == "failed" and cells[CIFAR][5] == "1/4"
        # A new run appears, a running one finishes: no key pressed.
        write_run(runs, "0" * 16, method="random", seed=1, status="running", rounds=1)
        write_run(runs, DIST1, method="distilled", seed=1, status="done", rounds=3)
        await wait_for(pilot, lambda: "0" * 16 in table(app).keys and
                       cells_of(app, DIST1)[4] == "done", what="the live update")
        assert cells_of(app, DIST1)[5] == "3/3"


@run_async
async def test_sort_reverse_and_filter(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("s", "s")  # experiment, then method
        assert table(app).keys[:3] == [DIST0, DIST1, CIFAR]  # "distilled" < "imp"
        assert "method ▲" in screen_text(app)
        await pilot.press("s", "s")  # seed, then status
        assert [cells_of(app, k)[4] for k in table(app).keys] == \
               ["done", "done", "done", "failed", "running", "stopped"]
        await pilot.press("S")
        assert cells_of(app, table(app).keys[0])[4] == "stopped" and "status ▼" in screen_text(app)
        await pilot.press("slash", *"fail")
        assert table(app).keys == [IMP1] and "filter 'fail': 1 shown" in screen_text(app)
        await pilot.press("enter")  # back to the table, filter kept
        assert app.focused is table(app) and table(app).keys == [IMP1]
        await pilot.press("escape")
        assert len(table(app).keys) == 6
        await pilot.press("slash", *"demo imp")
        assert sorted(table(app).keys) == sorted([IMP0, IMP1])
        await pilot.press("escape", "slash", *"zzz")
        assert table(app).keys == [] and "No run matches the filter" in screen_text(app)


@run_async
async def test_enter_opens_detail_and_keys_open_the_other_screens(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "enter")
        assert type(app.screen).__name__ == "DetailScreen" and app.screen.run_id == IMP0
        await pilot.press("escape", "i")
        assert type(app.screen).__name__ == "InterpolationScreen" and app.screen.run_id == IMP0
        await pilot.press("escape", "l")
        assert type(app.screen).__name__ == "LaunchScreen"
        await pilot.press("escape")
        assert type(app.screen).__name__ == "RunsScreen"
        await pilot.press("f1")
        assert app.screen.query("HelpPanel")
        await pilot.press("f1")
        assert not app.screen.query("HelpPanel")


@run_async
async def test_mark_runs_then_compare_them_or_compare_the_experiment(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "m", "down", "down", "m")  # imp s0 and distilled s0
        assert "2 marked" in screen_text(app) and cells_of(app, IMP0)[0] == "●"
        await pilot.press("p")
        assert type(app.screen).__name__ == "CompareScreen" and app.screen.run_ids == [IMP0, DIST0]
        await pilot.press("escape", "m", "up", "up", "m", "p")  # unmark both: compare the experiment
        assert app.screen.run_ids == [IMP0, IMP1, DIST0, DIST1, RAND0]


@run_async
async def test_cancel_asks_first_and_only_for_live_runs(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    app.launcher.fake_entries = {DIST1: launch_entry(DIST1, runs)}
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "c")  # imp s0 is done
        assert type(app.screen).__name__ == "RunsScreen" and app.launcher.calls == []
        table(app).move_cursor(row=ORDER.index(DIST1))
        await pilot.press("c")
        assert type(app.screen).__name__ == "ConfirmModal"
        await pilot.press("n")
        assert app.launcher.calls == []
        await pilot.press("c", "y")
        assert app.launcher.calls == [("cancel", DIST1)]


@run_async
async def test_resume_only_for_stopped_or_failed_runs(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "r")  # done
        assert app.launcher.calls == []
        await pilot.press("down", "r")  # imp s1 failed
        await pilot.press("up", "up", "r")  # cifar stopped
        assert app.launcher.calls == [("resume", IMP1), ("resume", CIFAR)]


@run_async
async def test_export_the_table_as_csv_markdown_html_and_svg(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        expected = app.screen.current_table()
        assert [r["run_id"] for r in expected.rows] == ORDER
        await pilot.press("e", "c", "e", "m", "e", "h", "e", "s")
        await wait_for(pilot, lambda: (runs / "exports" / "runs.svg").exists(), what="the svg")
        out = runs / "exports"
        assert (out / "runs.csv").read_text() == to_csv(expected)
        assert (out / "runs.md").read_text() == to_markdown([expected])
        assert (out / "runs.html").read_text() == to_html([expected], "dptui: Runs")
        svg = (out / "runs.svg").read_text()
        assert svg.startswith("<svg") and "screenshot" not in svg  # the dialog was gone
        await pilot.press("e", "escape")
        assert type(app.screen).__name__ == "RunsScreen"


@run_async
async def test_theme_toggle_quit_and_a_small_terminal(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        text = screen_text(app)
        assert "distilled" in text and "status" in text and "f1 Keys" in text
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"
        await pilot.press("ctrl+t")
        assert app.theme == "textual-dark"
        await pilot.press("q")
        assert not app.is_running


@run_async
async def test_an_empty_store_says_how_to_start(tmp_path):
    app = make_test_app(tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded)
        assert "Press l to launch a profile" in screen_text(app)


@run_async
async def test_a_launched_run_that_has_not_started_shows_as_queued(tmp_path):
    runs = tmp_path / "runs"
    app = make_test_app(runs)
    rid = "1" * 16
    e = launch_entry(rid, runs, state="queued")
    e.info = {"experiment": "quickstart", "method": "imp", "seed": 0, "dataset": "mnist-embedded",
              "model": "lenet-300-100", "device": "cpu", "rounds": 3}
    app.launcher.fake_entries = {rid: e}
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: table(app).keys == [rid])
        row = cells_of(app, rid)
        assert row[1:6] == ["quickstart", "imp", "0", "queued", "0/3"]
        assert json.dumps(app.active_run_count()) == "1"

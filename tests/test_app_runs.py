"""Runs screen: Pilot tests on a fake store (every binding), live updates, export."""

import itertools
import json
import os
import re

import torch

from app_fixtures import (CIFAR, DIST0, DIST1, IMP0, IMP1, RAND0, demo_store, launch_entry, make_test_app,
                          on_screen, run_async, screen_text, settled, wait_for, write_run)
from dptui.app.widgets import RowTable
from dptui.export import to_csv, to_html, to_markdown

ORDER = [CIFAR, IMP0, IMP1, DIST0, DIST1, RAND0]  # experiment, method order, seed


async def started(app, pilot):
    await wait_for(pilot, lambda: settled(app, "RunsScreen") and len(table(app).keys) == len(app.views),
                   what="the store to load")


async def shows(app, pilot, text: str) -> None:
    await wait_for(pilot, lambda: text in screen_text(app), what=f"{text!r} on the screen")


async def at(app, pilot, name: str) -> None:
    await wait_for(pilot, lambda: on_screen(app, name), what=f"the {name}")


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
        await shows(app, pilot, "6 runs · 1 running · 1 failed")
        cells = {k: cells_of(app, k) for k in ORDER}
        assert cells[DIST1][1:8] == ["demo", "distilled", "1", "running", "2/3", "12.5", "36.00"]  # 12.5: its ETA
        assert cells[IMP0][6] == "-"  # a finished run has no ETA
        assert cells[IMP1][4] == "failed" and cells[CIFAR][5] == "1/4"
        # A new run appears, a running one finishes: no key pressed.
        write_run(runs, "0" * 16, method="random", seed=1, status="running", rounds=1)
        write_run(runs, DIST1, method="distilled", seed=1, status="done", rounds=3)
        await wait_for(pilot, lambda: "0" * 16 in table(app).keys and cells_of(app, DIST1)[4] == "done"
                       and settled(app, "RunsScreen"), what="the live update")
        assert cells_of(app, DIST1)[5] == "3/3"


@run_async
async def test_sort_reverse_and_filter(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("s", "s")  # experiment, then method
        assert table(app).keys[:3] == [DIST0, DIST1, CIFAR]  # "distilled" < "imp"
        await shows(app, pilot, "method ▲")
        await pilot.press("s", "s")  # seed, then status
        assert [cells_of(app, k)[4] for k in table(app).keys] == \
               ["done", "done", "done", "failed", "running", "stopped"]
        await pilot.press("S")
        assert cells_of(app, table(app).keys[0])[4] == "stopped"
        await shows(app, pilot, "status ▼")
        await pilot.press("slash", *"fail")
        await wait_for(pilot, lambda: table(app).keys == [IMP1], what="the filtered rows")
        await shows(app, pilot, "filter 'fail': 1 shown")
        await pilot.press("enter")  # back to the table, filter kept
        await wait_for(pilot, lambda: app.focused is table(app), what="the table's focus")
        assert table(app).keys == [IMP1]
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(table(app).keys) == 6, what="the filter cleared")
        await pilot.press("slash", *"demo imp")
        await wait_for(pilot, lambda: sorted(table(app).keys) == sorted([IMP0, IMP1]), what="the filtered rows")
        await pilot.press("escape")
        await wait_for(pilot, lambda: len(table(app).keys) == 6, what="the filter cleared")
        await pilot.press("slash", *"zzz")
        await wait_for(pilot, lambda: table(app).keys == [], what="no row")
        await shows(app, pilot, "No run matches the filter")


@run_async
async def test_enter_opens_detail_and_keys_open_the_other_screens(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "enter")
        await at(app, pilot, "DetailScreen")
        assert app.screen.run_id == IMP0
        for key, name in (("i", "InterpolationScreen"), ("l", "LaunchScreen")):
            await pilot.press("escape")
            await at(app, pilot, "RunsScreen")
            await pilot.press(key)
            await at(app, pilot, name)
        assert app.screen.profile == "quickstart"
        await pilot.press("escape")
        await at(app, pilot, "RunsScreen")
        assert app.screen.selected == IMP0
        await pilot.press("f1")
        await wait_for(pilot, lambda: app.screen.query("HelpPanel"), what="the key help")
        await pilot.press("f1")
        await wait_for(pilot, lambda: not app.screen.query("HelpPanel"), what="the key help to close")


@run_async
async def test_mark_runs_then_compare_them_or_compare_the_experiment(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "m", "down", "down", "m")  # imp s0 and distilled s0
        assert app.screen.marked == {IMP0, DIST0} and cells_of(app, IMP0)[0] == "●"
        await shows(app, pilot, "2 marked")
        await pilot.press("p")
        await at(app, pilot, "CompareScreen")
        assert app.screen.run_ids == [IMP0, DIST0]
        await pilot.press("escape")
        await at(app, pilot, "RunsScreen")
        await pilot.press("m", "up", "up", "m")  # unmark both: compare the experiment
        assert app.screen.marked == set()
        await pilot.press("p")
        await at(app, pilot, "CompareScreen")
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
        await wait_for(pilot, lambda: app.screen.selected == DIST1, what="the cursor on distilled s1")
        await pilot.press("c")
        await at(app, pilot, "ConfirmModal")
        await pilot.press("n")
        await at(app, pilot, "RunsScreen")
        assert app.launcher.calls == []
        await pilot.press("c")
        await at(app, pilot, "ConfirmModal")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.launcher.calls, what="the cancel")
        assert app.launcher.calls == [("cancel", DIST1)]


@run_async
async def test_resume_only_for_stopped_or_failed_runs(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        await pilot.press("down", "r")  # done
        assert app.screen.selected == IMP0 and app.launcher.calls == []
        await pilot.press("down", "r")  # imp s1 failed
        await wait_for(pilot, lambda: app.launcher.calls == [("resume", IMP1)], what="imp s1's resume")
        await pilot.press("up", "up", "r")  # cifar stopped
        await wait_for(pilot, lambda: len(app.launcher.calls) == 2, what="cifar's resume")
        assert app.launcher.calls == [("resume", IMP1), ("resume", CIFAR)]


@run_async
async def test_export_the_table_as_csv_markdown_html_and_svg(tmp_path):
    runs = demo_store(tmp_path / "runs")
    app = make_test_app(runs)
    async with app.run_test(size=(100, 30)) as pilot:
        await started(app, pilot)
        expected = app.screen.current_table()
        assert [r["run_id"] for r in expected.rows] == ORDER
        out = runs / "exports"
        for key, fmt in (("c", "csv"), ("m", "md"), ("h", "html"), ("s", "svg")):
            await pilot.press("e")
            await at(app, pilot, "ExportModal")
            await pilot.press(key)
            await wait_for(pilot, lambda: (out / f"runs.{fmt}").exists(), what=f"runs.{fmt}")
            await at(app, pilot, "RunsScreen")
        assert (out / "runs.csv").read_text() == to_csv(expected)
        assert (out / "runs.md").read_text() == to_markdown([expected])
        assert (out / "runs.html").read_text() == to_html([expected], "dptui: Runs")
        svg = (out / "runs.svg").read_text()
        assert svg.startswith("<svg") and "screenshot" not in svg  # the dialog was gone
        await pilot.press("e")
        await at(app, pilot, "ExportModal")
        await pilot.press("escape")
        await at(app, pilot, "RunsScreen")


@run_async
async def test_theme_toggle_quit_and_a_small_terminal(tmp_path):
    app = make_test_app(demo_store(tmp_path / "runs"))
    async with app.run_test(size=(80, 24)) as pilot:
        await started(app, pilot)
        await shows(app, pilot, "f1 Keys")
        text = screen_text(app)
        assert "distilled" in text and "status" in text
        await pilot.press("ctrl+t")
        assert app.theme == "textual-light"
        await pilot.press("ctrl+t")
        assert app.theme == "textual-dark"
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="the app to quit")


@run_async
async def test_an_empty_store_says_how_to_start(tmp_path):
    app = make_test_app(tmp_path / "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the empty store")
        await shows(app, pilot, "Press l to launch a profile")


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
        await wait_for(pilot, lambda: settled(app, "RunsScreen") and table(app).keys == [rid], what="the queued run")
        row = cells_of(app, rid)
        assert row[1:6] == ["quickstart", "imp", "0", "queued", "0/3"]
        assert json.dumps(app.active_run_count()) == "1"


def test_the_load_probe_reads_cpu_and_memory_and_says_when_a_gpu_cannot_be_read():
    from dptui.app.load import LoadProbe

    probe = LoadProbe()
    first, second = probe(), probe()  # the second: the CPU share since the first
    for line in (first, second):
        cpu, mem = line.split(" · ")
        assert cpu.startswith("cpu ") and cpu.endswith(f"% of {os.cpu_count()}") and mem.startswith("mem ")
        used, total = mem.removeprefix("mem ").removesuffix(" GiB").split("/")
        assert 0 < float(used) <= float(total)
    if not torch.cuda.is_available():
        assert LoadProbe(gpus=1)().endswith("gpu0 unreadable")


@run_async
async def test_the_header_shows_the_machines_load_and_follows_it(tmp_path):
    counter = itertools.count(10)
    app = make_test_app(demo_store(tmp_path / "runs"), load_probe=lambda: f"cpu {next(counter)}% of 2 · mem 1/8 GiB",
                        load_s=0.05)

    def shown() -> int:
        found = re.search(r"cpu (\d+)% of 2 · mem 1/8 GiB", screen_text(app))
        return int(found[1]) if found else -1

    seen: list[int] = []  # the readings the header showed, in order

    def saw_another() -> bool:
        value = shown()
        if value >= 10 and (not seen or value != seen[-1]):
            seen.append(value)
        return len(seen) >= 2

    # wide enough for the title with pytest's long store path and the load line beside it
    async with app.run_test(size=(220, 40)) as pilot:
        await wait_for(pilot, saw_another, what="a load reading in the header, then a later one replacing it")
    assert seen[1] > seen[0]

"""The one end-to-end Pilot test: launch a real tiny experiment from the Launch screen (detached processes,
the queue runner, the real engine), watch its rounds arrive, then a launch whose data path is wrong: the
Launch screen's pre-start check refuses it with the CLI's error line, nothing is launched, and the
finished runs stay done."""

from dataclasses import replace

import pytest
from textual.widgets import Input, Log, Static

from app_fixtures import on_screen, run_async, screen_text, settled, wait_for
from dpcore.errors import DPError
from dpcore.profiles import load_profile
from dpcore.validate import validate_experiment
from dptui.app import make_app
from dptui.app.widgets import RowTable

OVERRIDES = ['prune.methods=["imp", "random"]', "prune.rounds=2", "train.epochs=1"]


def statuses(app) -> dict[str, str]:
    return {rid: v.status for rid, v in app.views.items()}


def status_line(app) -> str:
    return str(app.screen.query_one("#launch-status", Static).render())


def launch_form(app) -> bool:
    return on_screen(app, "LaunchScreen") and app.screen.form_settled


@run_async
async def test_launch_watch_and_a_launch_the_check_refuses(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    app = make_app(runs, profile=str(tiny_profile), gpu_count=0, blink=False, poll_s=0.2, follow_s=0.1,
                   overrides=OVERRIDES)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the empty store")
        await pilot.press("l")
        await wait_for(pilot, lambda: launch_form(app), what="the launch form")
        assert "2 run(s) to start: imp s0, random s0" in status_line(app)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: settled(app, "RunsScreen") and len(app.views) == 2
                       and app.screen.pending_select is None, what="the launched runs to show")
        good = sorted(app.views)
        assert set(statuses(app).values()) <= {"queued", "pending", "running", "done"}
        assert app.screen.selected in good  # the cursor is on the first launched run
        await pilot.press("enter")
        await wait_for(pilot, lambda: on_screen(app, "DetailScreen"), what="its Run detail")
        watched = app.screen.run_id
        # Rounds arrive live in Run detail, then the run finishes.
        await wait_for(pilot, lambda: len(app.screen.query_one(RowTable).keys) >= 2, timeout=120,
                       what="the first round in Run detail")
        await wait_for(pilot, lambda: statuses(app).get(watched) == "done", timeout=120, what="the run to finish")
        assert app.screen.query_one(RowTable).keys[-1].endswith("-2")
        await wait_for(pilot, lambda: any("round  2" in ln for ln in app.screen.query_one(Log).lines),
                       what="the process log tail")
        await wait_for(pilot, lambda: all(statuses(app)[r] == "done" for r in good), timeout=120,
                       what="both runs to finish")
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")

        # A launch that cannot find its data: the check refuses it with the CLI's line; nothing starts.
        cfg, _ = load_profile(str(tiny_profile), [*OVERRIDES, "data.path=/nowhere/x.npz"])
        with pytest.raises(DPError) as cli:
            validate_experiment(replace(cfg, run=replace(cfg.run, device="cpu")), runs, None)
        launches = sorted((runs / "launches").iterdir())
        await pilot.press("l")
        await wait_for(pilot, lambda: launch_form(app), what="the launch form")
        app.screen.query_one("#overrides", Input).value = "data.path=/nowhere/x.npz"
        await wait_for(pilot, lambda: "✓ valid · 2 run(s) to start" in status_line(app),
                       what="the form to take the new data path")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.screen.checking and status_line(app).startswith("✗"),
                       what="the pre-start check to refuse")
        assert status_line(app) == f"✗ {cli.value}" and "/nowhere/x.npz" in status_line(app)
        assert sorted((runs / "launches").iterdir()) == launches and sorted(app.views) == good
        await pilot.press("escape")
        await wait_for(pilot, lambda: settled(app, "RunsScreen"), what="the runs screen")
        assert [statuses(app)[r] for r in good] == ["done", "done"]
        await wait_for(pilot, lambda: screen_text(app).count("2/2") == 2, what="both runs' rounds on the screen")

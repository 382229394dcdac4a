"""The one end-to-end Pilot test: launch a real tiny experiment from the Launch screen (detached processes,
the queue runner, the real engine), watch its rounds arrive, then a launch whose data path is wrong:
its runs fail with the CLI's error line in the app while the finished ones stay done."""

from textual.widgets import Input, Log

from app_fixtures import run_async, screen_text, wait_for
from dptui.app import make_app
from dptui.app.widgets import RowTable


def statuses(app) -> dict[str, str]:
    return {rid: v.status for rid, v in app.views.items()}


@run_async
async def test_launch_watch_and_a_failing_launch(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    app = make_app(runs, profile=str(tiny_profile), gpu_count=0, blink=False, poll_s=0.2, follow_s=0.1,
                   overrides=['prune.methods=["imp", "random"]', "prune.rounds=2", "train.epochs=1"])
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: app.loaded)
        await pilot.press("l")
        await wait_for(pilot, lambda: getattr(app.screen, "ready", False))
        assert "2 run(s) to start: imp s0, random s0" in screen_text(app)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen" and len(app.views) == 2,
                       what="the launched runs to show")
        good = sorted(app.views)
        assert set(statuses(app).values()) <= {"queued", "pending", "running"}
        await pilot.press("enter")  # the cursor is on the first launched run
        await wait_for(pilot, lambda: getattr(app.screen, "ready", False))
        watched = app.screen.run_id
        # Rounds arrive live in Run detail, then the run finishes.
        await wait_for(pilot, lambda: len(app.screen.query_one(RowTable).keys) >= 2, timeout=120,
                       what="the first round in Run detail")
        await wait_for(pilot, lambda: statuses(app).get(watched) == "done", timeout=120, what="the run to finish")
        assert app.screen.query_one(RowTable).keys[-1].endswith("-2")
        await wait_for(pilot, lambda: any("round  2" in ln for ln in app.screen.query_one(Log).lines),
                       what="the process log tail")
        await pilot.press("escape")

        # A launch that cannot find its data: both runs fail with the CLI's error; the others stay done.
        await pilot.press("l")
        await wait_for(pilot, lambda: getattr(app.screen, "ready", False))
        app.screen.query_one("#overrides", Input).value = "data.path=/nowhere/x.npz"
        await pilot.pause()
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.views) == 4, what="the failing launch to show")
        bad = sorted(set(app.views) - set(good))
        await wait_for(pilot, lambda: all(statuses(app)[r] in ("done", "failed") for r in app.views), timeout=180,
                       what="every run to end")
        assert [statuses(app)[r] for r in good] == ["done", "done"]
        assert [statuses(app)[r] for r in bad] == ["failed", "failed"]
        assert all("/nowhere/x.npz" in app.views[r].error for r in bad)
        text = screen_text(app)
        assert text.count("failed") >= 2 and "2/2" in text

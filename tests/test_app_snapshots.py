"""Snapshot tests (pytest-textual-snapshot): every screen at 100x30 on the fake store, fixed theme, no clocks,
no cursor blink, profiles from a fixed folder. Update with ``pytest tests/test_app_snapshots.py --snapshot-update``
after a deliberate UI change (and regenerate ``screenshots/`` with ``scripts/screenshots.py``)."""

import pytest

from app_fixtures import DIST0, DIST1, IMP0, IMP1, demo_store, make_test_app, settled, wait_for

SIZE = (100, 30)
PROFILE = """
[experiment]
name = "demo"
description = "IMP vs distilled vs random on the embedded MNIST subset"
[data]
dataset = "mnist-embedded"
[model]
name = "lenet-300-100"
[synthetic.params]
iterations = 200
[prune]
rounds = 3
[run]
seeds = [0]
device = "cpu"
"""


@pytest.fixture
def store(tmp_path, monkeypatch):
    """The demo store at ./runs (so the app shows a relative path) and one profile in ./profiles, on a machine
    of 2 cores (the Launch screen shows how many runs go at once)."""
    import dpcore.parallel
    import dpcore.profiles

    monkeypatch.setattr(dpcore.parallel, "cpu_count", lambda: 2)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "demo.toml").write_text(PROFILE)
    monkeypatch.setattr(dpcore.profiles, "profile_dirs", lambda: [tmp_path / "profiles"])
    demo_store(tmp_path / "runs")
    return tmp_path / "runs"


def app_for(store, **kw):
    from pathlib import Path

    kw.setdefault("profile", "demo")
    return make_test_app(Path("runs"), **kw)


def until(predicate):
    """Wait for the screen's state (never for a duration), then for its scheduled animations."""
    async def run_before(pilot):
        await wait_for(pilot, lambda: predicate(pilot.app), what="the screen to be ready")
        await pilot.wait_for_scheduled_animations()
    return run_before


def loaded(app):
    return settled(app, "RunsScreen") and app.screen.query_one("RowTable").keys


def detail_ready(run_id):
    return lambda app: (settled(app, "DetailScreen") and run_id in app.lives and app.screen.query_one("Log").lines)


def test_runs(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=until(loaded))


def test_runs_light_theme(store, snap_compare):
    assert snap_compare(app_for(store, theme="textual-light"), terminal_size=SIZE, run_before=until(loaded))


def test_runs_80x24(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=(80, 24), run_before=until(loaded))


def _detail(run_id):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_detail(run_id)
        await until(detail_ready(run_id))(pilot)
    return run_before


def test_detail_running(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=_detail(DIST1))


def test_detail_failed(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=_detail(IMP1))


def test_compare(store, snap_compare):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_compare(pilot.app.experiment_of(IMP0))
        await until(lambda a: settled(a, "CompareScreen"))(pilot)
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=run_before)


def test_interpolation(store, snap_compare):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_interpolation(DIST0)
        await until(lambda a: settled(a, "InterpolationScreen") and a.screen.query_one("RowTable").keys)(pilot)
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=run_before)


def test_interpolation_empty(store, snap_compare):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_interpolation(IMP0)
        await until(lambda a: settled(a, "InterpolationScreen"))(pilot)
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=run_before)


def test_launch(store, snap_compare):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_launch()
        await until(lambda a: settled(a, "LaunchScreen") and a.screen.form_settled and "valid" in str(
            a.screen.query_one("#launch-status").render()))(pilot)
    assert snap_compare(app_for(store, overrides=["prune.rounds=2"]), terminal_size=SIZE, run_before=run_before)

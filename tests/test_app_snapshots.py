"""Snapshot tests (pytest-textual-snapshot): every screen at 100x30 on the fake store, fixed theme, no clocks,
no cursor blink, profiles from a fixed folder. Update with ``pytest tests/test_app_snapshots.py --snapshot-update``
after a deliberate UI change (and regenerate ``screenshots/`` with ``scripts/screenshots.py``)."""

import json

import pytest

from app_fixtures import (DIST0, DIST1, IMP0, IMP1, RAND0, demo_store, make_test_app, settled, wait_for, write_config,
                          write_past_set)

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
    """Runs shows the store, the running runs' events read (their ETA comes from them)."""
    return settled(app, "RunsScreen") and app.screen.query_one("RowTable").keys and \
        all(run_id in app.lives for run_id, view in app.views.items() if view.active)


def detail_ready(run_id):
    return lambda app: (settled(app, "DetailScreen") and run_id in app.lives and app.screen.query_one("Log").lines)


def test_runs(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=until(loaded))


def test_runs_light_theme(store, snap_compare):
    assert snap_compare(app_for(store, theme="textual-light"), terminal_size=SIZE, run_before=until(loaded))


def test_runs_80x24(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=(80, 24), run_before=until(loaded))


def test_runs_120x40(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=(120, 40), run_before=until(loaded))


def _detail(run_id):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_detail(run_id)
        await until(detail_ready(run_id))(pilot)
    return run_before


def test_detail_running(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=_detail(DIST1))


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_detail_running_sizes(store, snap_compare, size):
    """The ETA line, sparklines and log of a running run at the smallest and a roomy terminal."""
    assert snap_compare(app_for(store), terminal_size=size, run_before=_detail(DIST1))


def test_detail_failed(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=_detail(IMP1))


def test_compare(store, snap_compare):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_compare(pilot.app.experiment_of(IMP0))
        await until(lambda a: settled(a, "CompareScreen"))(pilot)
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=run_before)


def _compare_with_baseline(run_id):
    """Compare of the demo experiment (distilled and imp have two seeds: their min–max bands) with the line of
    ``run_id``'s method pinned as the baseline."""
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_compare(pilot.app.experiment_of(IMP0))
        await until(lambda a: settled(a, "CompareScreen"))(pilot)
        pick = pilot.app.screen.query_one("SelectionList")
        pick.highlighted = next(i for i in range(pick.option_count) if pick.get_option_at_index(i).value == run_id)
        await pilot.press("b")
        await until(lambda a: settled(a, "CompareScreen") and a.screen.baseline is not None
                    and "vs_baseline" in [c.key for c in a.screen.current_table().columns])(pilot)
    return run_before


def test_compare_baseline_80x24(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=(80, 24), run_before=_compare_with_baseline(IMP0))


def test_compare_baseline_120x40(store, snap_compare):
    assert snap_compare(app_for(store), terminal_size=(120, 40), run_before=_compare_with_baseline(IMP0))


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


def with_past_runs(store):
    """The demo store's finished runs with their config.toml (the demo profile's): the Launch screen's estimate
    comes from their recorded times, the same on every machine (a calibration's would not)."""
    from dpcore.profiles import load_profile

    cfg, _ = load_profile("demo")
    for run_id, method, peak in ((IMP0, "imp", 310.0), (DIST0, "distilled", 355.0), (RAND0, "random", 300.0)):
        write_config(store / run_id, cfg, method, 0)
        results = json.loads((store / run_id / "results.json").read_text())
        (store / run_id / "results.json").write_text(json.dumps({**results, "peak_memory_mb": peak}))
    write_past_set(store, cfg)  # and the synthetic set's time, from a set distilled before
    return store


def launch_ready(app):
    screen = app.screen
    return (settled(app, "LaunchScreen") and screen.form_settled and "valid" in str(
        screen.query_one("#launch-status").render()) and screen.estimate is not None
            and screen.estimate[0] == screen.estimate_wanted)


def _launch(pilot):
    async def run_before(pilot):
        await until(loaded)(pilot)
        pilot.app.open_launch()
        await until(launch_ready)(pilot)
    return run_before(pilot)


def test_launch(store, snap_compare):
    """The form, its status line and the estimate of what a start would run (from the store's past runs)."""
    app = app_for(with_past_runs(store), overrides=["prune.rounds=2"])
    assert snap_compare(app, terminal_size=SIZE, run_before=_launch)


def test_launch_80x24(store, snap_compare):
    app = app_for(with_past_runs(store), overrides=["prune.rounds=2"])
    assert snap_compare(app, terminal_size=(80, 24), run_before=_launch)


def test_launch_120x40(store, snap_compare):
    app = app_for(with_past_runs(store), overrides=["prune.rounds=2"])
    assert snap_compare(app, terminal_size=(120, 40), run_before=_launch)

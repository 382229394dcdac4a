"""Launch screen: the profile's settings in a form, validated as you type with the CLI's messages,
devices, start (through the launcher), save as a new preset."""

import pytest
from textual.widgets import Input, OptionList, SelectionList, Static

from app_fixtures import make_test_app, on_screen, run_async, screen_text, wait_for, write_past_runs, write_run
from dpcore import parallel
from dpcore.errors import ConfigError
from dpcore.estimate import ExperimentEstimate, RunEstimate
from dpcore.profiles import load_profile
from dptui.app.launch_screen import estimate_text, toml_literal


async def open_launch(app, pilot):
    await wait_for(pilot, lambda: app.loaded and on_screen(app, "RunsScreen"), what="the runs screen")
    await pilot.press("l")
    await wait_for(pilot, lambda: form_ready(app), what="the launch screen's form")


def form_ready(app, profile: str | None = None) -> bool:
    """The Launch screen shows ``profile``'s form (any, if None): every field mounted and validated."""
    screen = app.screen
    return on_screen(app, "LaunchScreen") and screen.form_settled and (profile is None or screen.profile == profile)


async def status_is(app, pilot, expected: str, what: str = "") -> None:
    await wait_for(pilot, lambda: status(app) == expected, what=what or f"the status line {expected!r}")


async def status_has(app, pilot, part: str, what: str = "") -> None:
    await wait_for(pilot, lambda: part in status(app), what=what or f"the status line to show {part!r}")


def status(app) -> str:
    return str(app.screen.query_one("#launch-status", Static).render())


def field(app, key) -> Input:
    return app.screen.query_one(f"#f-{key.replace('.', '--')}", Input)


def estimate_shown(app) -> str:
    return str(app.screen.query_one("#launch-estimate", Static).render())


def estimate_made(app) -> bool:
    """The Launch screen shows the estimate of what a start would run now (made for the form as it is)."""
    screen = app.screen
    return (form_ready(app) and screen.estimate_wanted is not None and screen.estimate is not None
            and screen.estimate[0] == screen.estimate_wanted)


@run_async
async def test_shows_the_profile_and_validates_as_you_type_with_the_cli_messages(tmp_path, tiny_profile):
    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        assert app.screen.query_one("#profiles", OptionList).highlighted_option.id == str(tiny_profile)
        assert field(app, "train.epochs").value == "2" and field(app, "data.dataset").value == "npz"
        assert field(app, "synthetic.params.iterations").value == "3"  # the distiller's parameters too
        assert "✓ valid · 3 run(s) to start: imp s0, distilled s0, random s0 · on CPU" in status(app)
        field(app, "train.epochs").focus()
        await pilot.press("end", "backspace", "minus", "1")
        with pytest.raises(ConfigError) as cli:
            load_profile(str(tiny_profile), ["train.epochs=-1"])
        await status_is(app, pilot, f"✗ {cli.value}")  # the same line `dptui --set train.epochs=-1` prints
        assert field(app, "train.epochs").has_class("-invalid") and field(app, "train.epochs").has_class("changed")
        await wait_for(pilot, lambda: "train.epochs (an integer, default 10)" in screen_text(app),
                       what="the focused field's help")
        await pilot.press("backspace", "backspace", "4")
        await status_has(app, pilot, "✓ valid")
        assert field(app, "train.epochs").value == "4" and not field(app, "train.epochs").has_class("-invalid")
        overrides = app.screen.query_one("#overrides", Input)
        overrides.value = "prune.rounds=0"
        with pytest.raises(ConfigError) as cli:
            load_profile(str(tiny_profile), ["train.epochs=4", "prune.rounds=0"])
        await status_is(app, pilot, f"✗ {cli.value}")
        overrides.value = "prune.methods=[\"imp\"] run.seeds=[0,1]"
        await status_has(app, pilot, "2 run(s) to start: imp s0, imp s1")


@run_async
async def test_start_launches_the_edited_config_and_skips_finished_runs(tmp_path, tiny_profile):
    runs = tmp_path / "runs"
    app = make_test_app(runs, profile=str(tiny_profile), overrides=["prune.rounds=2"])
    cfg, _ = load_profile(str(tiny_profile), ["prune.rounds=2"])
    plans = app.launcher.plan(cfg, ["cpu"])[1]
    write_run(runs, plans[0].run_id, method="imp", experiment="tiny", rounds=2, planned=2)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        assert field(app, "prune.rounds").value == "2" and field(app, "prune.rounds").has_class("changed")  # --set
        assert "2 run(s) to start: distilled s0, random s0" in status(app) and "skipping 1 already done" in status(app)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.launcher.calls, what="the launch (after the pre-start check)")
        (kind, launched, slots, only), = app.launcher.calls
        assert kind == "launch" and slots == ["cpu"] and only == [p.run_id for p in plans[1:]]
        assert launched.prune.rounds == 2
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")
        await open_launch(app, pilot)
        field(app, "train.lr").value = "0.005"  # another config: other runs, none done
        await status_has(app, pilot, "3 run(s) to start")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: len(app.launcher.calls) == 2, what="the second launch")
        launched, only = app.launcher.calls[1][1], app.launcher.calls[1][3]
        assert launched.train.lr == 0.005 and len(only) == 3 and not set(only) & {p.run_id for p in plans}


@run_async
async def test_save_the_settings_as_a_new_preset(tmp_path, tiny_profile, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        app.screen.query_one("#overrides", Input).value = "prune.rounds=5"
        await status_has(app, pilot, "✓ valid")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "NameModal", what="the name dialog")
        await pilot.press(*"bad name")
        await wait_for(pilot, lambda: "letters, digits" in screen_text(app), what="the name's problem")
        await pilot.press("enter")
        assert type(app.screen).__name__ == "NameModal"  # refused
        app.screen.query_one(Input).value = "tiny5"
        await wait_for(pilot, lambda: "letters, digits" not in screen_text(app), what="the name accepted")
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "profiles" / "tiny5.toml").exists() and form_ready(app, "tiny5")
                       and app.screen.query_one("#profiles", OptionList).highlighted_option.id == "tiny5",
                       what="the new preset's form")
        saved, _ = load_profile("tiny5")
        assert saved.prune.rounds == 5 and saved.experiment.name == "tiny5" and saved.train.epochs == 2
        assert field(app, "prune.rounds").value == "5" and app.screen.query_one("#overrides", Input).value == ""


@run_async
async def test_devices_one_slot_per_gpu(tmp_path, tiny_profile):
    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile), gpu_count=2)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        devices = app.screen.query_one("#devices", SelectionList)
        assert devices.selected == ["gpu0", "gpu1"] and app.screen.slots() == ["gpu0", "gpu1"]
        assert "on GPU 0, GPU 1, 1 at once on each" in status(app)  # the tiny profile's run.jobs = 1
        devices.deselect_all()
        await status_is(app, pilot, "✗ pick at least one device")
        devices.select("cpu")
        cores = parallel.cpu_count()
        await status_has(app, pilot, f"on CPU, 1 at once ({cores} thread{'s' if cores != 1 else ''} each)")
        assert app.screen.slots() == ["cpu"]
        field(app, "run.jobs").value = "2"  # the places follow the form, with the cores split between them
        two = parallel.capacity("cpu", 2, 0)
        await status_has(app, pilot, f"on CPU, 2 at once ({two.threads} thread{'s' if two.threads != 1 else ''} each)")
        await pilot.press("escape")
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")


@run_async
async def test_picking_another_profile_shows_its_settings(tmp_path, tiny_profile):
    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        profiles = app.screen.query_one("#profiles", OptionList)
        profiles.highlighted = [o.id for o in profiles.options].index("quickstart")
        await wait_for(pilot, lambda: form_ready(app, "quickstart"), what="quickstart's form")
        quickstart = load_profile("quickstart")[0]
        assert field(app, "data.dataset").value == "mnist" == quickstart.data.dataset
        assert field(app, "prune.rounds").value == str(quickstart.prune.rounds)
        assert "quickstart" in screen_text(app)
        profiles.highlighted = [o.id for o in profiles.options].index(str(tiny_profile))  # and back
        await wait_for(pilot, lambda: form_ready(app, str(tiny_profile)), what="the tiny profile's form")
        assert field(app, "data.dataset").value == "npz" and field(app, "train.epochs").value == "2"


@run_async
async def test_a_profile_with_synthetic_variants_plans_one_distilled_run_per_source(tmp_path, tiny_profile):
    text = tiny_profile.read_text().replace("[prune]", '[[synthetic.variants]]\nmethod = "random-subset"\n\n'
                                            '[[synthetic.variants]]\nname = "dm-1"\nmethod = "dm"\nipc = 1\n\n[prune]')
    path = tmp_path / "variants.toml"
    path.write_text(text)
    app = make_test_app(tmp_path / "runs", profile=str(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        assert field(app, "synthetic.variants").value == '[{method = "random-subset"}, {name = "dm-1", method = "dm", ipc = 1}]'
        assert "4 run(s) to start: imp s0, distilled random-subset ipc2 s0, distilled dm-1 s0, random s0" in status(app)
        field(app, "synthetic.variants").focus()
        await pilot.press("end", "left", "left", "backspace", "0")  # ipc = 1 -> ipc = 0
        await status_has(app, pilot, "'synthetic.variants[1].ipc' = 0 must be >= 1")
        assert status(app).startswith("✗")


@run_async
async def test_start_checks_the_input_first_and_shows_why_it_refuses(tmp_path, tiny_profile):
    from dataclasses import replace

    from dpcore.errors import DPError
    from dpcore.validate import validate_experiment

    path = tmp_path / "bad-source.toml"
    missing = tmp_path / "nowhere.pt"
    path.write_text(tiny_profile.read_text().replace("[synthetic]\n", f'[synthetic]\npath = "{missing}"\n'))
    runs = tmp_path / "runs"
    cfg, _ = load_profile(str(path))
    with pytest.raises(DPError) as check:  # the line `dptui --headless` would stop with, before training
        validate_experiment(replace(cfg, run=replace(cfg.run, device="cpu")), runs, None)
    assert "\n" not in str(check.value) and "nowhere.pt" in str(check.value)
    app = make_test_app(runs, profile=str(path))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        assert status(app).startswith("✓ valid")  # the form itself is fine: only the check can tell
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not app.screen.checking and status(app).startswith("✗"),
                       what="the pre-start check to refuse")
        assert status(app) == f"✗ {check.value}"
        assert app.launcher.calls == [] and not (runs / "launches").exists()
        assert on_screen(app, "LaunchScreen")  # still here, to fix the setting
        field(app, "prune.methods").value = '["imp", "random"]'  # no distilled run: no synthetic source to check
        await status_has(app, pilot, "✓ valid · 2 run(s) to start: imp s0, random s0")
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.launcher.calls, what="the launch")
        (_, launched, _, only), = app.launcher.calls
        assert launched.prune.methods == ["imp", "random"] and len(only) == 2


def test_the_estimate_reads_in_two_lines_with_runs_alike_but_for_the_seed_together():
    same = [RunEstimate("a", "imp seed 0", 0, 30.0, "store (2 past runs)", 700.0),
            RunEstimate("b", "imp seed 1", 1, 30.0, "store (2 past runs)", 700.0),
            RunEstimate("c", "distilled seed 0", 0, 150.0, "store (2 past runs)", 700.0, ("not distilled",))]
    est = ExperimentEstimate(same, 2, 150.0, ["a synthetic set still to be distilled is not in the estimate"])
    assert estimate_text(est, places=2, at_once=2).plain == (
        "estimate imp s0,s1 30.0s · distilled s0 2.5m\n"
        "experiment 2.5m, 2 at once · peak 700 MiB a run, 1400 MiB at once · distilling not counted"
        " · from store (2 past runs)")
    mixed = [RunEstimate("a", "imp seed 0", 0, 30.0, "store (1 past run)", 500.0),
             RunEstimate("b", "random seed 0", 0, 10.0, "calibration (12 timed steps here)", 800.0)]
    assert estimate_text(ExperimentEstimate(mixed, 1, 40.0), places=1, at_once=1).plain == (
        "estimate imp s0 30.0s 500 MiB (store) · random s0 10.0s 800 MiB (calibration)\n"
        "experiment 40.0s, 1 at once · peak up to 800 MiB a run · from store (1 past run), calibration (12 timed "
        "steps here)")


@run_async
async def test_the_estimate_of_a_start_shows_with_its_source_and_follows_the_form(tmp_path, tiny_profile,
                                                                                   monkeypatch):
    import threading

    import dpcore.estimate
    from dpcore.experiment import Experiment

    runs = tmp_path / "runs"
    cfg, _ = load_profile(str(tiny_profile))
    write_past_runs(runs, cfg, seed=1)  # each method of this config, finished at another seed
    app = make_test_app(runs, profile=str(tiny_profile))
    planned, plans = app.launcher.plan(cfg, ["cpu"])
    expected = dpcore.estimate.estimate(Experiment(planned, runs, only=[p.run_id for p in plans], device="cpu"))
    assert {e.source for e in expected.runs} == {"store (1 past run)"}
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        await wait_for(pilot, lambda: estimate_made(app), what="the estimate from the store")
        assert estimate_shown(app) == estimate_text(expected, places=1, at_once=1).plain  # `--dry-run`'s numbers
        assert "imp s0" in estimate_shown(app) and "from store (1 past run)" in estimate_shown(app)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: app.launcher.calls, what="the launch")
        assert app.launcher.estimates == [{e.run_id: e.wall_s for e in expected.runs}]  # kept for the runs' ETA
        await wait_for(pilot, lambda: on_screen(app, "RunsScreen"), what="the runs screen")
        await open_launch(app, pilot)
        await wait_for(pilot, lambda: estimate_made(app), what="the estimate again")
        # A form change the store has no past run for: a calibration, in a worker, held here until released.
        gate, estimate = threading.Event(), dpcore.estimate.estimate
        monkeypatch.setattr(dpcore.estimate, "estimate", lambda exp: (gate.wait(30), estimate(exp))[1])
        field(app, "train.epochs").value = "3"
        await wait_for(pilot, lambda: form_ready(app) and estimate_shown(app).startswith("estimating…"),
                       what="'estimating…' while the estimate is made")
        assert status(app).startswith("✓ valid")  # the form is usable meanwhile
        field(app, "train.epochs").value = "4"  # newer than the estimate being made: that one is never shown
        await wait_for(pilot, lambda: form_ready(app), what="the form")
        gate.set()
        await wait_for(pilot, lambda: estimate_made(app), what="the calibration's estimate")
        assert app.screen.estimate[0][0] == app.screen.form_state()
        assert estimate_shown(app).endswith("from calibration (12 timed steps here)")
        assert app.screen.estimate[1].runs[0].run_id == app.launcher.plan(app.screen.cfg, ["cpu"])[1][0].run_id


@run_async
async def test_switching_the_synthetic_method_swaps_in_its_parameters(tmp_path, tiny_profile):
    from dpcore.synthetic import DISTILLERS

    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        field(app, "synthetic.method").value = "el2n"
        await wait_for(pilot, lambda: form_ready(app) and app.screen.params_method == "el2n", what="el2n's parameters")
        assert status(app).startswith("synthetic.method dm → el2n: dropped iterations, batch_real; added el2n's 11 "
                                      "defaults\n✓ valid")
        el2n = DISTILLERS["el2n"].defaults
        assert {k: field(app, f"synthetic.params.{k}").value for k in el2n} == \
            {k: toml_literal(v) for k, v in el2n.items()}
        assert not app.screen.query("#f-synthetic--params--iterations")
        # the config the CLI's error line leads to: the profile's parameters dropped, el2n's own defaults
        assert app.screen.cfg == load_profile(str(tiny_profile), ["synthetic.method=el2n", "synthetic.params={}"])[0]
        field(app, "synthetic.params.seeds").value = "2"
        await wait_for(pilot, lambda: form_ready(app) and app.screen.cfg is not None
                       and app.screen.cfg.synthetic.params == {"seeds": 2}, what="seeds = 2")
        assert field(app, "synthetic.params.seeds").has_class("changed") and status(app).startswith("✓ valid")
        field(app, "synthetic.method").value = "dm"  # back to the profile's method: its own parameters again
        await wait_for(pilot, lambda: form_ready(app) and app.screen.params_method == "dm", what="dm's parameters")
        assert status(app).startswith("synthetic.method el2n → dm: dropped el2n's 11; added iterations, batch_real "
                                      "(the profile's)\n✓ valid")
        assert field(app, "synthetic.params.iterations").value == "3" and app.screen.overrides() == []
        assert app.screen.cfg == load_profile(str(tiny_profile))[0]

"""Launch screen: the profile's settings in a form, validated as you type with the CLI's messages,
devices, start (through the launcher), save as a new preset."""

import pytest
from textual.widgets import Input, OptionList, SelectionList, Static

from app_fixtures import make_test_app, on_screen, run_async, screen_text, wait_for, write_run
from dpcore import parallel
from dpcore.errors import ConfigError
from dpcore.profiles import load_profile


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

"""Launch screen: the profile's settings in a form, validated as you type with the CLI's messages,
devices, start (through the launcher), save as a new preset."""

import pytest
from textual.widgets import Input, OptionList, SelectionList, Static

from app_fixtures import make_test_app, run_async, screen_text, wait_for, write_run
from dpcore.errors import ConfigError
from dpcore.profiles import load_profile


async def open_launch(app, pilot):
    await wait_for(pilot, lambda: app.loaded)
    await pilot.press("l")
    await wait_for(pilot, lambda: getattr(app.screen, "ready", False), what="the launch screen")


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
        assert status(app) == f"✗ {cli.value}"  # the same line `dptui --set train.epochs=-1` prints
        assert field(app, "train.epochs").has_class("-invalid") and field(app, "train.epochs").has_class("changed")
        assert "train.epochs (an integer, default 10)" in screen_text(app)  # the focused field's help
        await pilot.press("backspace", "backspace", "4")
        assert status(app).startswith("✓ valid") and not field(app, "train.epochs").has_class("-invalid")
        overrides = app.screen.query_one("#overrides", Input)
        overrides.value = "prune.rounds=0"
        await pilot.pause()
        with pytest.raises(ConfigError) as cli:
            load_profile(str(tiny_profile), ["train.epochs=4", "prune.rounds=0"])
        assert status(app) == f"✗ {cli.value}"
        overrides.value = "prune.methods=[\"imp\"] run.seeds=[0,1]"
        await pilot.pause()
        assert "2 run(s) to start: imp s0, imp s1" in status(app)


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
        await wait_for(pilot, lambda: app.launcher.calls, what="the launch")
        (kind, launched, slots, only), = app.launcher.calls
        assert kind == "launch" and slots == ["cpu"] and only == [p.run_id for p in plans[1:]]
        assert launched.prune.rounds == 2
        await wait_for(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
        await open_launch(app, pilot)
        field(app, "train.lr").value = "0.005"  # another config: other runs, none done
        await pilot.pause()
        assert "3 run(s) to start" in status(app)
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
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "NameModal")
        await pilot.press(*"bad name")
        assert "letters, digits" in screen_text(app)
        await pilot.press("enter")
        assert type(app.screen).__name__ == "NameModal"  # refused
        app.screen.query_one(Input).value = "tiny5"
        await pilot.press("enter")
        await wait_for(pilot, lambda: (tmp_path / "profiles" / "tiny5.toml").exists() and
                       getattr(app.screen, "profile", "") in ("tiny5", str(tmp_path / "profiles" / "tiny5.toml")))
        saved, _ = load_profile("tiny5")
        assert saved.prune.rounds == 5 and saved.experiment.name == "tiny5" and saved.train.epochs == 2
        await wait_for(pilot, lambda: field(app, "prune.rounds").value == "5")


@run_async
async def test_devices_one_slot_per_gpu(tmp_path, tiny_profile):
    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile), gpu_count=2)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        devices = app.screen.query_one("#devices", SelectionList)
        assert devices.selected == ["gpu0", "gpu1"] and app.screen.slots() == ["gpu0", "gpu1"]
        assert "on GPU 0, GPU 1" in status(app)
        devices.deselect_all()
        await pilot.pause()
        assert status(app) == "✗ pick at least one device"
        devices.select("cpu")
        await pilot.pause()
        assert app.screen.slots() == ["cpu"] and "on CPU" in status(app)
        await pilot.press("escape")
        assert type(app.screen).__name__ == "RunsScreen"


@run_async
async def test_picking_another_profile_shows_its_settings(tmp_path, tiny_profile):
    app = make_test_app(tmp_path / "runs", profile=str(tiny_profile))
    async with app.run_test(size=(100, 30)) as pilot:
        await open_launch(app, pilot)
        profiles = app.screen.query_one("#profiles", OptionList)
        profiles.highlighted = [o.id for o in profiles.options].index("quickstart")
        await wait_for(pilot, lambda: app.screen.profile == "quickstart" and
                       field(app, "data.dataset").value == "mnist-embedded", what="quickstart's settings")
        assert field(app, "prune.rounds").value == str(load_profile("quickstart")[0].prune.rounds)
        assert "quickstart" in screen_text(app)


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
        await wait_for(pilot, lambda: "valid" in status(app))
        assert "4 run(s) to start: imp s0, distilled random-subset ipc2 s0, distilled dm-1 s0, random s0" in status(app)
        field(app, "synthetic.variants").focus()
        await pilot.press("end", "left", "left", "backspace", "0")  # ipc = 1 -> ipc = 0
        await wait_for(pilot, lambda: "✗" in status(app))
        assert "'synthetic.variants[1].ipc' = 0 must be >= 1" in status(app)

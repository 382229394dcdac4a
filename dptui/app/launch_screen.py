"""Launch: pick a profile, see and edit its settings (validated as you type), pick devices, start."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import DescendantFocus
from textual.widgets import Footer, Input, Label, OptionList, SelectionList, Static
from textual.widgets.option_list import Option
from textual.worker import get_current_worker

from dpcore.config import Config, describe_keys, to_dict
from dpcore.errors import DPError
from dpcore.estimate import NOT_COUNTED, ExperimentEstimate, pack
from dpcore.profiles import list_profiles, load_profile, parse_override, read_toml, save_profile
from dptui.launches.launcher import RAY_SLOT

from .dash_screen import KEYS, DashScreen
from .model import secs
from .widgets import FormInput, NameModal

SKIP_KEYS = {"model.options", "synthetic.params", "run.device", "run.executor"}  # per profile / the device list
PRESET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CLUSTER_UNKNOWN = "the cluster could not be read"
KEY_IN_MESSAGE = re.compile(r"'([a-z_]+(?:\.[A-Za-z0-9_]+)+)'")


def toml_literal(value: Any, top: bool = True) -> str:
    """A value as the text one types after ``--set KEY=`` (a top-level string bare when that reads back
    the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        from dpcore.profiles import parse_override

        if top and value and parse_override(f"x.y={value}")[1] == value and value.strip() == value:
            return value
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v, False) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_literal(v, False)}" for k, v in value.items()) + "}"
    return str(value)


def split_overrides(text: str) -> list[str]:
    """``a.b=1 c.d=["x", "y"] e.f="two words"`` -> one item per override: split at spaces outside quotes and
    brackets, keeping the quotes (there is no shell here to eat them)."""
    items, cur, depth, quote = [], "", 0, ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch.isspace() and depth <= 0:
            if cur:
                items.append(cur)
            cur = ""
            continue
        cur += ch
    if quote or depth > 0:
        raise DPError(f"--set {cur!r}: unclosed {quote or 'bracket'}")
    return items + ([cur] if cur else [])


def lookup(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def form_keys(cfg: Config) -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for the form: every setting, with the profile's model options and
    distiller parameters as their own keys (``model.width``, ``synthetic.params.iterations``)."""
    rows = []
    for key, kind, default, help_text in describe_keys():
        if key in SKIP_KEYS:
            if key == "model.options":
                rows += [(f"model.{k}", type(v).__name__, None, "model option") for k, v in cfg.model.options.items()]
            elif key == "synthetic.params":
                rows += [(f"synthetic.params.{k}", type(v).__name__, None, "distiller parameter")
                         for k, v in cfg.synthetic.params.items()]
            continue
        rows.append((key, kind, default, help_text))
    return rows


def field_id(key: str) -> str:
    return "f-" + key.replace(".", "--")


PARAMS = "synthetic.params."


def method_defaults(method: str, dataset: str, ipc: int) -> dict[str, Any]:
    """A distiller's parameters as it runs with none given: its own resolution for this dataset and ipc where
    its defaults depend on them (MTT, GM), else its defaults."""
    from dpcore.synthetic import get_distiller

    distiller = get_distiller(method)
    resolve = getattr(distiller, "resolve", None)
    if resolve is not None:
        try:
            return dict(resolve(dataset, ipc, {}))
        except DPError:
            pass  # a dataset or ipc it has no row for: its plain defaults
    return dict(distiller.defaults)


def estimate_text(est: ExperimentEstimate, places: int, at_once: int, per_gpu: bool = False) -> Text:
    """An estimate in two short lines: each run's wall time (runs alike but for the seed together), then the
    experiment's on ``places`` places, the peak memory (of a run; of ``at_once`` runs on one device) and where
    the numbers come from."""
    sources = list(dict.fromkeys(e.source for e in est.runs))
    peaks = sorted({e.peak_mb for e in est.runs if e.peak_mb}, reverse=True)
    groups: dict[tuple, list[int]] = {}
    for e in est.runs:
        tag = e.source.split(" (")[0] if len(sources) > 1 else ""  # the sources differ: say each run's
        peak = e.peak_mb if len(peaks) > 1 else None  # they differ: say each run's
        groups.setdefault((e.label.rsplit(" seed ", 1)[0], secs(e.wall_s), peak, tag), []).append(e.seed)
    runs = " · ".join(f"{name} {','.join(f's{seed}' for seed in seeds)} {wall}"
                      + (f" {peak:.0f} MiB" if peak else "") + (f" ({tag})" if tag else "")
                      for (name, wall, peak, tag), seeds in groups.items())
    memory = ""
    if peaks:
        top = sorted((e.peak_mb for e in est.runs if e.peak_mb), reverse=True)[:max(1, at_once)]
        memory = f" · peak {'up to ' if len(peaks) > 1 else ''}{peaks[0]:.0f} MiB a run" + (
            f", {sum(top):.0f} MiB at once{' per GPU' if per_gpu else ''}" if len(top) > 1 else "")
    wall = pack((e.wall_s for e in est.runs), places)
    left_out = " · distilling not counted" if NOT_COUNTED in est.notes else ""
    distilling = "".join(f" · incl. distilling {secs(s)} ({where})" for s, where in est.distills)
    return Text.assemble(("estimate ", "bold"), runs, "\n", f"experiment {secs(wall)}, {places} at once{memory}"
                                                            f"{distilling}{left_out} · from {', '.join(sources)}")


def with_params(fields: dict[str, Any], anchor: str, params: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (form order) with its ``synthetic.params.*`` entries replaced by ``params``, after ``anchor``."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if not key.startswith(PARAMS):
            out[key] = value
        if key == anchor:
            out.update(params)
    return out


def swap_text(old: str, new: str, shown: list[str], wanted: list[str], profile: bool) -> str:
    """What a switch of the synthetic method did to the form's distiller parameters, in one short line."""
    def names(keys: list[str], whose: str) -> str:
        return ", ".join(keys) if len(keys) <= 3 else f"{whose} {len(keys)}"

    dropped = [k for k in shown if k not in wanted]
    added = [k for k in wanted if k not in shown]
    old_s, new_s = f"{old}'s", f"{new}'s"
    parts = [f"dropped {names(dropped, old_s)}"] if dropped else []
    if added:
        parts.append(f"added {names(added, new_s)} " + ("(the profile's)" if profile else "defaults"))
    return f"synthetic.method {old} → {new}: " + ("; ".join(parts) or "the same parameters")


class LaunchScreen(DashScreen):
    BINDINGS = [
        KEYS,
        Binding("escape", "app.pop_screen", "Back"),
        Binding("ctrl+r", "start", "Start", priority=True),
        Binding("ctrl+s", "save", "Save preset", priority=True),
        Binding("ctrl+o", "focus_overrides", "Overrides", priority=True),
    ]

    def __init__(self, profile: str = "quickstart", overrides: list[str] | None = None):
        super().__init__()
        self.profile = profile
        self.initial_overrides = list(overrides or [])
        self.base: Config | None = None
        self.base_values: dict[str, str] = {}
        self.keys: dict[str, tuple] = {}
        self.cfg: Config | None = None
        self.error: str | None = None
        self.plan_text = ""
        self._validate_pending = False
        # True once the form shows ``self.profile``'s settings: every field mounted, the overrides put in,
        # validated. False while another profile's form is being built (tests and refreshes wait for it).
        self.form_ready = False
        self.checking = False  # the pre-start check (data, synthetic sources, devices) runs in a worker
        self.check_failed: tuple[tuple, str] | None = None  # (form state it was for, its error line)
        self.cluster_text = ""  # the Ray cluster's nodes and free resources, once read
        # The estimate of what a start would run: the one wanted (its form state and runs), the latest made
        # (key, ExperimentEstimate or why there is none), the one being made, the next to make after it.
        self.estimate_wanted: tuple | None = None
        self.estimate: tuple[tuple, ExperimentEstimate | str] | None = None
        self._estimating: tuple | None = None
        self._estimate_next: tuple | None = None
        self.params_method: str | None = None  # the distiller whose parameters the form shows
        self.swap_note: tuple[tuple, str] | None = None  # (form state it is about, what a method swap replaced)

    @property
    def form_settled(self) -> bool:
        """The form is ready and no validation is owed: the status line speaks for what the fields show."""
        return self.form_ready and not self._validate_pending

    # -- layout ----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield self.title_line()
        with Horizontal(id="launch-body"):
            yield OptionList(id="profiles")
            with Vertical(id="launch-main"):
                yield Static("", id="profile-desc")
                with Horizontal(classes="form-row"):
                    yield Label("--set", classes="form-key")
                    yield FormInput("", id="overrides",
                                    placeholder="SECTION.KEY=VALUE ... e.g. prune.rounds=3 run.seeds=[0]")
                with Horizontal(id="devices-row"):
                    yield Label("devices", classes="form-key")
                    yield SelectionList[str](id="devices")
                yield VerticalScroll(id="form")
                yield Static("", id="field-help")
        yield Static("", id="launch-status")
        yield Static("", id="launch-estimate")
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        self.set_title(Text.assemble(("Launch", "bold"), "  pick a profile, edit its settings, ctrl+r starts"))
        self.query_one("#profiles").border_title = "profiles"
        self.query_one("#form").border_title = "settings (edited = override)"
        profiles = self.profile_names()
        opts = self.query_one("#profiles", OptionList)
        opts.add_options([Option(name, id=name) for name in profiles])
        self._fill_devices()
        if self.profile in profiles:
            opts.highlighted = profiles.index(self.profile)
        await self.load(self.profile, self.initial_overrides)
        self.query_one("#overrides").focus()
        self.show_load()
        self.ready = True

    def profile_names(self) -> list[str]:
        names = list(list_profiles())
        if self.profile not in names:
            names.append(self.profile)  # a .toml path given with --profile
        return names

    def _fill_devices(self) -> None:
        slots = self.dash.launcher.device_slots()
        dev = self.query_one("#devices", SelectionList)
        dev.clear_options()
        labels = [(f"{s} (run.jobs runs at once)" if s == "cpu" else f"GPU {s[3:]}", s, True) for s in slots]
        if slots != ["cpu"]:
            labels.append(("cpu (instead of GPUs)", "cpu", False))
        if importlib.util.find_spec("ray") is not None:
            labels.append(("Ray cluster (one task per run, run.gpus_per_run / cpus_per_run each)", RAY_SLOT, False))
        dev.add_options(labels)
        dev.styles.height = len(labels)

    async def load(self, profile: str, overrides: list[str] | None = None) -> None:
        """Show ``profile``'s settings in the form (then ``overrides``, if given, in their fields and the
        --set box). ``form_ready`` is False until every field is mounted and the result validated, and
        ``profile`` names the new profile only from then on: a half-built form is never taken for it."""
        self.form_ready = False
        self.base_values, self.keys = {}, {}  # no overrides while the form changes
        form = self.query_one("#form", VerticalScroll)
        try:
            base, path = load_profile(profile)
        except DPError as err:
            await form.remove_children()
            self.base, self.profile, self.params_method, self.swap_note = None, profile, None, None
            self.query_one("#profile-desc", Static).update(Text(str(err), style="red"))
            if overrides is not None:
                self.apply_overrides(overrides)
            self.validate()
            self.form_ready = True
            return
        self.base = base
        tree = to_dict(base)
        desc = read_toml(path).get("experiment", {}).get("description", "")
        where = f"{path.parent.name}/{path.name}"  # short, and the same wherever the checkout is
        self.query_one("#profile-desc", Static).update(Text.assemble((Path(profile).stem, "bold"), f"  {desc}",
                                                                     (f"  ({where})", "dim")))
        keys = {k: (kind, default, help_text) for k, kind, default, help_text in form_keys(base)}
        values = {key: toml_literal(tree["model"][key.split(".", 1)[1]] if key.startswith("model.") else lookup(tree, key))
                  for key in keys}
        if list(keys) == [w.id for w in self.query(".form-value")] or \
                [field_id(k) for k in keys] == [w.id for w in self.query(".form-value")]:
            for key, value in values.items():  # same settings: just show the new values
                self.query_one(f"#{field_id(key)}", Input).value = value
        else:
            await form.remove_children()
            await form.mount_all([Horizontal(Label(key, classes="form-key"),
                                             FormInput(value, id=field_id(key), classes="form-value"),
                                             classes="form-row") for key, value in values.items()])
        self.keys, self.base_values, self.profile = keys, values, profile
        self.params_method, self.swap_note = base.synthetic.method, None
        if overrides is not None:
            self.apply_overrides(overrides)
        self.validate()
        self.form_ready = True

    def apply_overrides(self, overrides: list[str]) -> None:
        """Put ``--set`` overrides into their form fields (the rest into the --set box)."""
        rest = []
        for text in overrides:
            key, sep, value = text.partition("=")
            if sep and key.strip() in self.base_values:
                self.query_one(f"#{field_id(key.strip())}", Input).value = value.strip()
            else:
                rest.append(text)
        self.query_one("#overrides", Input).value = " ".join(rest)

    # -- validation ------------------------------------------------------------------------------
    def field_overrides(self) -> list[str]:
        inputs = {w.id: w for w in self.query(".form-value")}
        out = []
        for key, base in self.base_values.items():
            inp = inputs.get(field_id(key))
            if inp is not None and inp.value.strip() != base:
                out.append(f"{key}={inp.value.strip()}")
        return out

    def overrides(self) -> list[str]:
        # Another method's parameters than the profile's: the profile's are dropped first, as the CLI's error says
        reset = ["synthetic.params={}"] if self.base is not None and self.params_method != self.base.synthetic.method \
            else []
        return reset + self.field_overrides() + split_overrides(self.query_one("#overrides", Input).value)

    def validate(self) -> Config | None:
        """Check the profile + overrides exactly as ``dptui --profile P --set ...`` does."""
        self.cfg, self.error = None, None
        for inp in self.query(".form-value"):
            inp.remove_class("-invalid")
        try:
            cfg, _ = load_profile(self.profile, self.overrides())
            if not self.slots():
                raise DPError("pick at least one device")
            self.cfg = cfg
        except DPError as err:
            self.error = str(err)
            m = KEY_IN_MESSAGE.search(self.error)
            if m and m.group(1) in self.keys:
                self.query(f"#{field_id(m.group(1))}").add_class("-invalid")
        for inp in self.query(".form-value"):
            key = inp.id[2:].replace("--", ".")
            inp.set_class(key in self.base_values and inp.value.strip() != self.base_values[key], "changed")
        self.show_status()
        return self.cfg

    def slots(self) -> list[str]:
        selected = list(self.query_one("#devices", SelectionList).selected)
        if RAY_SLOT in selected:
            return [RAY_SLOT]
        gpus = [s for s in selected if s.startswith("gpu")]
        return gpus or (["cpu"] if "cpu" in selected else [])

    def plan(self) -> tuple[list[str], list[str]]:
        """(run ids to start, notes on the ones skipped)."""
        app = self.dash
        _, plans = app.launcher.plan(self.cfg, self.slots())
        todo, done, busy = [], [], []
        for p in plans:
            view = app.views.get(p.run_id)
            status = view.status if view else None
            (done if status == "done" else busy if view is not None and view.active else todo).append(p)
        notes = []
        if done:
            notes.append(f"{len(done)} already done")
        if busy:
            notes.append(f"{len(busy)} running or queued")
        self.plan_text = ", ".join(f"{p.label} s{p.seed}" for p in todo)
        return [p.run_id for p in todo], notes

    def form_state(self) -> tuple:
        """What a start would launch: the profile, every field's text and the devices."""
        return (self.profile, tuple((w.id, w.value) for w in self.query(Input)), tuple(self.slots()))

    def show_status(self) -> None:
        app = self.dash
        self.shown_version = app.data_version  # what a start would skip is read from the views right now
        status = self.query_one("#launch-status", Static)
        note = self.swap_note[1] if self.swap_note is not None and self.swap_note[0] == self.form_state() else ""
        if self.error:
            status.update(Text.assemble((f"{note}\n", "yellow") if note else "", (f"✗ {self.error}", "bold red")))
            self.want_estimate([], [])
            return
        if self.checking:
            status.update(Text("… checking the data, the synthetic sources and the devices before starting",
                               style="bold yellow"))
            return
        if self.check_failed is not None and self.check_failed[0] == self.form_state():
            status.update(Text(f"✗ {self.check_failed[1]}", style="bold red"))
            return
        todo, notes = self.plan()
        slots = self.slots()
        if slots == [RAY_SLOT]:
            where = f"Ray ({self.cluster_text})"
        else:
            where = self.places_text(slots)
        text = (f"✓ valid · {len(todo)} run(s) to start: {self.plan_text or 'none'} · on {where}"
                + (f" · skipping {', '.join(notes)}" if notes else ""))
        status.update(Text.assemble((f"{note}\n", "yellow") if note else "", (text, "green")))
        self.want_estimate(todo, slots)

    # -- the estimate of what a start would run --------------------------------------------------
    def want_estimate(self, todo: list[str], slots: list[str]) -> None:
        """Show the estimate of ``todo`` on ``slots`` (none when empty), making it in a worker unless made."""
        if not todo or slots == [RAY_SLOT]:  # a Ray cluster's places and devices are not known here
            self.estimate_wanted = None
        else:
            key = (self.form_state(), tuple(todo))
            self.estimate_wanted = key
            made = self.estimate is not None and self.estimate[0] == key
            if not made and key != self._estimating:
                self._estimate_next = (key, self.cfg, list(slots), list(todo))  # newer than any still waiting
                if self._estimating is None:
                    self._start_estimate()
        self.show_estimate()

    def _start_estimate(self) -> None:
        key, cfg, slots, todo = self._estimate_next
        self._estimate_next, self._estimating = None, key
        self.make_estimate(key, cfg, slots, todo)

    @work(thread=True, group="launch-estimate", exit_on_error=False, name="estimate the runs")
    def make_estimate(self, key: tuple, cfg: Config, slots: list[str], todo: list[str]) -> None:
        """:func:`dpcore.estimate.estimate`, as ``--dry-run`` prints it: from the store's past runs, else a few
        timed training steps (seconds of work: never on the UI thread)."""
        from dpcore.estimate import estimate
        from dpcore.experiment import Experiment

        app = self.dash
        try:
            cfg, _ = app.launcher.plan(cfg, slots)  # with the devices' type, as the runs get it
            result: ExperimentEstimate | str = estimate(
                Experiment(cfg, app.runs_dir, app.data_root, only=todo, device=cfg.run.device))
        except DPError as err:
            result = f"no estimate: {err}"
        except Exception as err:  # noqa: BLE001 - say why there is none; the form and the start go on
            result = f"no estimate: {type(err).__name__}: {err}"
        if not get_current_worker().is_cancelled:
            app.call_from_thread(self._estimated, key, result)

    def _estimated(self, key: tuple, result: ExperimentEstimate | str) -> None:
        self._estimating, self.estimate = None, (key, result)
        if self._estimate_next is not None:
            self._start_estimate()
        self.show_estimate()

    def show_estimate(self) -> None:
        widget = self.query_one("#launch-estimate", Static)
        key = self.estimate_wanted
        widget.display = key is not None
        if key is None:
            widget.update("")
        elif self.estimate is None or self.estimate[0] != key:
            widget.update(Text("estimating… (from the store's past runs, else a few timed training steps)",
                               style="dim"))
        elif isinstance(self.estimate[1], str):
            widget.update(Text(self.estimate[1], style="yellow"))
        else:
            slots = self.slots()
            caps = self.dash.launcher.capacity(self.cfg, slots)
            places = sum(c.jobs for c in caps.values()) or 1
            at_once = max((c.jobs for c in caps.values()), default=1)
            widget.update(estimate_text(self.estimate[1], places, at_once, per_gpu=slots != ["cpu"]))

    def estimates_for(self, state: tuple, todo: list[str]) -> dict[str, float] | None:
        """Each run's estimated wall time, when the estimate shown is of exactly what starts (the runs keep it
        for their ETA until a round of theirs ends)."""
        if self.estimate is None or self.estimate[0] != (state, tuple(todo)) or isinstance(self.estimate[1], str):
            return None
        return {e.run_id: e.wall_s for e in self.estimate[1].runs}

    def places_text(self, slots: list[str]) -> str:
        """Where the runs go and how many at once (``run.jobs``, as the launch will record it)."""
        caps = self.dash.launcher.capacity(self.cfg, slots)
        if slots == ["cpu"]:
            cap = caps["cpu"]
            return f"CPU, {cap.jobs} at once ({cap.threads} thread{'s' if cap.threads != 1 else ''} each)"
        gpus = ", ".join(f"GPU {s[3:]}" for s in slots)
        return f"{gpus}, {caps[slots[0]].jobs} at once on each" if caps else gpus

    def refresh_data(self) -> None:
        if self.form_ready and self.error is None and self.cfg is not None:
            self.show_status()  # runs finishing or starting change what a start would skip

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if event.input.id == "overrides" or event.input.has_class("form-value"):
            self.validate_soon()

    @on(SelectionList.SelectedChanged, "#devices")
    def _devices(self) -> None:
        if self.slots() == [RAY_SLOT] and self.cluster_text in ("", CLUSTER_UNKNOWN):
            self.cluster_text = "looking for the cluster…"
            self.read_cluster()
        self.validate_soon()

    @work(thread=True, exclusive=True, group="ray-cluster", exit_on_error=False, name="read the Ray cluster")
    def read_cluster(self) -> None:
        """The cluster's nodes and free CPUs/GPUs, from ``dptui cluster --json`` in a subprocess (Ray's
        client never runs inside the dashboard's process)."""
        app = self.dash
        address = (self.cfg.run.ray_address if self.cfg is not None else "") or os.environ.get("RAY_ADDRESS") or ""
        argv = [sys.executable, "-m", "dptui", "cluster", "--json", *(["--ray-address", address] if address else [])]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
            if proc.returncode == 0:
                info = json.loads(proc.stdout.strip().splitlines()[-1])
                nodes = ", ".join(f"{n['address']} {n['cpus']:g} CPU {n['gpus']:g} GPU"
                                  for n in info["nodes"] if n["alive"])
                text = f"{info['line']}: {nodes}"
            else:
                text = ("no running cluster found: a local Ray instance starts with the launch"
                        if "running Ray" in proc.stderr or "auto" in proc.stderr else
                        (proc.stderr.strip().splitlines() or [CLUSTER_UNKNOWN])[-1])
        except (OSError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as err:
            text = f"{CLUSTER_UNKNOWN} ({type(err).__name__})"
        if not get_current_worker().is_cancelled:
            app.call_from_thread(self._cluster_read, text)

    def _cluster_read(self, text: str) -> None:
        self.cluster_text = text
        self.show_status()

    def validate_soon(self) -> None:
        """Validate once after the changes already queued (a form being filled sends one per field)."""
        if not self._validate_pending:
            self._validate_pending = True
            self.call_later(self._validate_now)

    async def _validate_now(self) -> None:
        if self.form_ready:  # a form being built validates once it is complete
            await self.swap_params()
        self._validate_pending = False
        if self.form_ready:
            self.validate()

    # -- switching the synthetic method ----------------------------------------------------------
    def form_value(self, key: str, fallback: Any) -> Any:
        """The value a field's text stands for (``fallback`` when there is no such field or it does not parse)."""
        found = self.query(f"#{field_id(key)}")
        if not found:
            return fallback
        try:
            return parse_override(f"{key}={found.first(Input).value.strip()}")[1]
        except DPError:
            return fallback

    async def swap_params(self) -> None:
        """When the synthetic.method field names another distiller than the one whose parameters the form
        shows, show the new one's instead (its defaults, or the profile's values for the profile's method; a
        parameter both take keeps its text), so that the form validates; the status line says what changed."""
        from dpcore.synthetic import DISTILLERS

        new, old = self.form_value("synthetic.method", None), self.params_method
        if self.base is None or old is None or not isinstance(new, str) or new not in DISTILLERS or new == old:
            return
        if new == self.base.synthetic.method:
            wanted = dict(self.base.synthetic.params)
        else:
            ipc = self.form_value("synthetic.ipc", self.base.synthetic.ipc)
            wanted = method_defaults(new, str(self.form_value("data.dataset", self.base.data.dataset)),
                                     ipc if isinstance(ipc, int) else self.base.synthetic.ipc)
        shown = {k[len(PARAMS):]: w.value for k in self.keys if k.startswith(PARAMS)
                 for w in self.query(f"#{field_id(k)}").results(Input)}
        for key in shown:
            await self.query_one(f"#{field_id(PARAMS + key)}").parent.remove()
        base_text = {k: toml_literal(v) for k, v in wanted.items()}
        texts = {k: shown.get(k, text) for k, text in base_text.items()}
        anchor = self.params_anchor()
        if texts:
            await self.query_one("#form").mount_all(
                [Horizontal(Label(PARAMS + k, classes="form-key"), FormInput(text, id=field_id(PARAMS + k),
                                                                             classes="form-value"),
                            classes="form-row") for k, text in texts.items()],
                after=self.query_one(f"#{field_id(anchor)}").parent)
        self.keys = with_params(self.keys, anchor, {PARAMS + k: (type(v).__name__, v, f"{new} parameter")
                                                    for k, v in wanted.items()})
        self.base_values = with_params(self.base_values, anchor, {PARAMS + k: t for k, t in base_text.items()})
        self.params_method = new
        self.swap_note = (self.form_state(), swap_text(old, new, list(shown), list(wanted),
                                                       new == self.base.synthetic.method))

    def params_anchor(self) -> str:
        """The field the distiller's parameters follow in the form (the setting before ``synthetic.params``)."""
        keys = [k for k, *_ in describe_keys()]
        return next(k for k in reversed(keys[:keys.index("synthetic.params")]) if k in self.keys)

    async def on_option_list_option_highlighted(self, event: OptionList.OptionHighlighted) -> None:
        if event.option.id and event.option.id != self.profile:
            await self.load(event.option.id)

    def on_descendant_focus(self, event: DescendantFocus) -> None:
        widget = event.widget
        help_line = self.query_one("#field-help", Static)
        if widget.id and widget.id.startswith("f-"):
            key = widget.id[2:].replace("--", ".")
            kind, default, text = self.keys.get(key, ("", None, ""))
            default_text = "" if default is None else f", default {toml_literal(default)}"
            help_line.update(Text.assemble((key, "bold"), f" ({kind}{default_text})  {text}"))
        elif widget.id == "overrides":
            help_line.update("extra --set overrides, space separated, as on the command line")
        elif widget.id == "devices":
            help_line.update("run.jobs runs at once on each device (0 = auto: cores // run.threads on the CPU, each "
                             "run with its share of the cores; 4 on a GPU); Ray: every run a task on the cluster of "
                             "run.ray_address ($RAY_ADDRESS, else this machine)")
        else:
            help_line.update("")

    # -- actions ---------------------------------------------------------------------------------
    def action_focus_overrides(self) -> None:
        self.query_one("#overrides").focus()

    def action_start(self) -> None:
        """Validate the form, then check the experiment's input in a worker (it loads the data, so it takes
        seconds) and launch only if that passes; a failure shows in the status line like a form error."""
        if self.checking:
            self.app.notify("still checking the previous start", severity="warning")
            return
        if not self.form_ready or self.validate() is None:
            self.app.notify(f"cannot start: {self.error or 'the form is not ready'}", severity="error")
            return
        todo, notes = self.plan()
        if not todo:
            self.app.notify("nothing to start: " + ", ".join(notes), severity="warning")
            return
        app = self.dash
        cfg, _ = app.launcher.plan(self.cfg, self.slots())  # with the devices' type, as the runs get it
        self.checking, self.check_failed = True, None
        self.show_status()
        self.check_then_start(self.form_state(), cfg, self.slots(), todo)

    @work(thread=True, exclusive=True, group="launch-check", exit_on_error=False, name="check before start")
    def check_then_start(self, state: tuple, cfg: Config, slots: list[str], todo: list[str]) -> None:
        from dpcore.validate import validate_experiment

        app = self.dash
        try:
            validate_experiment(cfg, app.runs_dir, app.data_root)
            error = None
        except DPError as err:
            error = str(err)
        except Exception as err:  # noqa: BLE001 - say what went wrong; never launch unchecked
            error = f"checking the experiment failed: {type(err).__name__}: {err}"
        if not get_current_worker().is_cancelled:
            app.call_from_thread(self._checked, state, slots, todo, error)

    def _checked(self, state: tuple, slots: list[str], todo: list[str], error: str | None) -> None:
        app = self.dash
        self.checking = False
        if app.screen is not self:  # closed (or covered by a dialog) while checking: start nothing
            self.app.notify("nothing started: the Launch screen was left while its input was checked",
                            severity="warning")
            return
        if error is not None:
            self.check_failed = (state, error)
            self.show_status()
            self.app.notify(f"cannot start: {error}", severity="error")
            return
        if not self.form_ready or self.validate() is None or self.form_state() != state:
            self.show_status()
            self.app.notify("the settings changed while they were checked; press ctrl+r again", severity="warning")
            return
        try:
            launch_dir, ids = app.launcher.launch(self.cfg, slots, only=todo, estimates=self.estimates_for(state, todo))
        except (DPError, OSError) as err:
            self.check_failed = (state, f"cannot start: {err}")
            self.show_status()
            self.app.notify(f"cannot start: {err}", severity="error")
            return
        self.app.notify(f"started {len(ids)} run(s) in the background ({launch_dir.name}); "
                        "they go on if you quit")
        app.poke()
        app.pop_screen()
        runs = app.screen
        if hasattr(runs, "pending_select"):
            runs.pending_select = ids[0]

    def action_save(self) -> None:
        if self.validate() is None:
            self.app.notify(f"cannot save: {self.error}", severity="error")
            return
        existing = list_profiles()

        def check(name: str) -> str | None:
            name = name.strip()
            if not PRESET_NAME.match(name):
                return "letters, digits, '-', '_' and '.' only"
            if name in existing:
                return f"a profile named '{name}' exists ({existing[name]})"
            return None

        async def save(name: str | None) -> None:
            if not name:
                return
            cfg = self.cfg
            if self.base is not None and cfg.experiment.name == self.base.experiment.name:
                cfg = replace(cfg, experiment=replace(cfg.experiment, name=name))
            path = Path.cwd() / "profiles" / f"{name}.toml"
            save_profile(cfg, path)
            self.app.notify(f"saved {path}")
            opts = self.query_one("#profiles", OptionList)
            opts.clear_options()
            names = self.profile_names() if name in list_profiles() else self.profile_names() + [name]
            opts.add_options([Option(n, id=n) for n in names])
            self.query_one("#overrides", Input).value = ""
            await self.load(name if name in list_profiles() else str(path))
            if name in names:
                opts.highlighted = names.index(name)

        self.app.push_screen(NameModal("Save these settings as a new preset named:", "", check), save)

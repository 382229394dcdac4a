"""The fast paths (``[run]`` precision, channels_last, compile): they train, keep masks exact, agree with
the plain loop, report compile warm-up apart, validate, and enter a run's identity only when set."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
import torch

from dpcore.config import Config, config_from_dict
from dpcore.data.dataset import Dataset
from dpcore.engine import run_identity
from dpcore.errors import ConfigError
from dpcore.masks import full_mask, magnitude_prune
from dpcore.models import build_model
from dpcore.store import config_hash
from dpcore import training
from dpcore.training import FastPath, Schedule, evaluate, train

SHAPE, C = (3, 8, 8), 4
pytestmark = pytest.mark.usefixtures("one_thread")


def learnable(per_class: int = 32, seed: int = 0) -> Dataset:
    """Class templates plus noise, as uint8 images: a few epochs learn them."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 256, (C, *SHAPE), generator=g).float()
    y = torch.arange(C).repeat_interleave(per_class)
    x = (templates[y] * 0.6 + torch.randint(0, 256, (len(y), *SHAPE), generator=g) * 0.4).to(torch.uint8)
    return Dataset("t", x, y, x, y, C, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def convnet(width: int = 4):
    torch.manual_seed(0)
    return build_model("convnet", num_classes=C, in_shape=SHAPE, width=width, depth=1)


def masked(model):
    mask = full_mask(model)
    for r in (1, 2):
        mask = magnitude_prune(model, mask, total_round=r, fraction=0.3, scope="global")
    return mask


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_trains_and_learns(precision):
    ds = learnable()
    model = convnet(8)
    fast = FastPath(precision=precision)
    before, _ = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare, fast=fast)
    out = train(model, ds.x_train, ds.y_train, schedule=Schedule("adam", 0.01, 8, 16), seed=0,
                prepare=ds.prepare, fast=fast)
    acc, loss = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare, fast=fast)
    assert out.steps == 8 * 8 and out.compile_s == 0 and not out.compiled
    assert acc >= 0.9 > before and loss < 1.0
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())  # fp32 master weights
    plain, _ = evaluate(model, ds.x_test, ds.y_test, prepare=ds.prepare)
    assert abs(plain - acc) <= 0.05  # the same model, evaluated in fp32


@pytest.mark.parametrize("compile", ["off", "on"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_masked_weights_stay_exactly_zero(precision, channels_last, compile):
    ds = learnable(8)
    model = convnet()
    mask = masked(model)
    out = train(model, ds.x_train, ds.y_train, schedule=Schedule("adam", 0.05, 2, 8), seed=0, prepare=ds.prepare,
                mask=mask, fast=FastPath(precision=precision, channels_last=channels_last, compile=compile))
    assert out.compiled == (compile == "on")
    params = dict(model.named_parameters())
    for name, m in mask.items():
        assert not m.all() and bool((params[name][~m] == 0).all()), name
        assert bool((params[name][m] != 0).all()), name  # the survivors trained
    if channels_last:  # converted once and kept: the next training reuses the same storage (no re-conversion)
        assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
        ptrs = [p.data_ptr() for p in model.parameters()]
        train(model, ds.x_train, ds.y_train, schedule=Schedule("adam", 0.05, 1, 8), seed=1, prepare=ds.prepare,
              mask=mask, fast=FastPath(precision=precision, channels_last=True, compile=compile))
        assert [p.data_ptr() for p in model.parameters()] == ptrs
        assert all(bool((params[name][~m] == 0).all()) for name, m in mask.items())
    else:
        assert all(p.is_contiguous() for p in model.parameters())


def compiled_graphs() -> tuple[int, int]:
    """(frames dynamo compiled, distinct graphs it built) in this process so far."""
    from torch._dynamo.utils import counters

    return counters["frames"]["total"], counters["stats"]["unique_graphs"]


def test_compile_on_and_off_agree_and_warm_up_is_reported_apart():
    ds = learnable(16)
    states, outs, graphs = [], [], []
    for compile in ("off", "on"):
        model = convnet(6)  # a width no other test compiles: this process compiles it here
        mask = masked(model)
        before = compiled_graphs()
        t = time.perf_counter()
        outs.append(train(model, ds.x_train, ds.y_train, schedule=Schedule("sgd", 0.02, 3, 16), seed=1,
                          prepare=ds.prepare, mask=mask, fast=FastPath(compile=compile)))
        outs[-1].wall = time.perf_counter() - t
        graphs.append(tuple(b - a for a, b in zip(before, compiled_graphs())))
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k], rtol=1e-4, atol=1e-5)
    off, on = outs
    assert not off.compiled and off.compile_s == 0 and on.compiled and on.steps == off.steps == 12
    assert graphs[0] == (0, 0) and graphs[1][0] >= 1 and graphs[1][1] >= 1  # only "on" compiled
    step = training.compiled_step(training._loss, model)  # the process's compiled step for this architecture
    assert step.compiled is not None and not step.broken
    assert on.compile_s > 0 and on.train_s > 0  # the warm-up is timed apart from the training
    assert on.train_s + on.compile_s <= on.wall
    model = convnet(6)  # the same architecture again: the process's graphs are reused, no new warm-up
    before = compiled_graphs()
    again = train(model, ds.x_train, ds.y_train, schedule=Schedule("sgd", 0.02, 3, 16), seed=1, prepare=ds.prepare,
                  mask=masked(model), fast=FastPath(compile="on"))
    assert again.compiled and compiled_graphs() == before  # nothing compiled: the graphs were reused
    assert training.compiled_step(training._loss, model) is step
    for k, v in model.state_dict().items():  # and a seeded compiled training on the CPU is reproducible
        assert torch.equal(v, states[1][k]), k


def test_compile_auto_is_for_conv_nets_trained_long_enough():
    auto, cpu = FastPath(compile="auto"), torch.device("cpu")
    lenet = build_model("lenet-300-100", num_classes=C, in_shape=SHAPE)
    big = training.AUTO_COMPILE_MIN_SAMPLES
    assert not auto.compiles(lenet, cpu, 100 * big)
    assert not auto.compiles(convnet(), cpu, big - 1)
    assert auto.compiles(convnet(), cpu, big) == training.compiler_available(cpu)
    alexnet = build_model("alexnet", num_classes=C, in_shape=(3, 32, 32))
    bn = build_model("convnet", num_classes=C, in_shape=SHAPE, width=4, depth=1, norm="batch")
    assert not auto.compiles(alexnet, cpu, 100 * big) and not auto.compiles(bn, cpu, 100 * big)  # they gain nothing
    assert not auto.compiles(convnet(), torch.device("cuda"), 100 * big)  # not measured on CUDA yet
    assert FastPath(compile="on").compiles(lenet, cpu, 1) and not FastPath(compile="off").compiles(convnet(), cpu, big)


def test_a_failing_compiler_falls_back_to_eager(monkeypatch):
    def broken(fn, **kw):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run

    monkeypatch.setattr(training.torch, "compile", broken)
    compiled = training._Compiled(training._loss)
    model, x, y = convnet(), torch.randn(2, *SHAPE), torch.tensor([0, 1])
    want = training._loss(model, x, y)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        assert torch.equal(compiled(model, x, y), want)
    assert compiled.broken and torch.equal(compiled(model, x, y), want)  # eager from now on, no new warning


def test_bad_settings_are_one_line_config_errors():
    with pytest.raises(ConfigError) as err:
        config_from_dict({"run": {"precision": "fp64"}}, "p.toml")
    assert "\n" not in str(err.value) and "'run.precision'" in str(err.value) and "'bf16'" in str(err.value)
    with pytest.raises(ConfigError, match="'run.compile'"):
        config_from_dict({"run": {"compile": "yes"}})
    with pytest.raises(ConfigError, match="true or false"):
        config_from_dict({"run": {"channels_last": "yes"}})
    with pytest.raises(ConfigError, match="precision 'fp8'"):
        FastPath(precision="fp8")
    cfg = config_from_dict({"run": {"precision": "bf16", "channels_last": True, "compile": "off"}})
    assert FastPath.of(cfg.run) == FastPath(precision="bf16", channels_last=True, compile="off")
    assert FastPath.of(Config().run) == FastPath(compile="auto")


def test_a_set_fast_path_changes_the_run_id_and_the_default_does_not():
    cfg, cpu = Config(), torch.device("cpu")
    base = run_identity(cfg, "imp", 0, cpu)
    assert config_hash(base) == "7ac5c78438dd56ae"  # pinned in test_engine: the defaults add nothing
    for key, value in (("precision", "bf16"), ("precision", "fp16"), ("channels_last", True),
                       ("compile", "on"), ("compile", "off")):
        ident = run_identity(replace(cfg, run=replace(cfg.run, **{key: value})), "imp", 0, cpu)
        assert ident != base and ident["train"][key] == value, key  # under train: the dense baseline's key too
    explicit = replace(cfg, run=replace(cfg.run, precision="fp32", channels_last=False, compile="auto"))
    assert run_identity(explicit, "imp", 0, cpu) == base


def test_a_compile_fallback_is_recorded_in_the_round_rows_and_said_once_by_headless(monkeypatch, tmp_path, tiny_profile):
    """A planted compile failure: the steps run eagerly, every round row says compiled = false, and the headless
    output names the run and the error once (never a "compiled" timing that was eager)."""
    from typer.testing import CliRunner

    import dpcore.training as training
    from dptui.cli import app

    def planted(fn, **kwargs):
        def fails(*args):
            raise RuntimeError("planted: no C++ compiler")
        return fails

    monkeypatch.setattr(training, "_COMPILED", {})  # no compiled step of an earlier test is reused
    monkeypatch.setattr(torch, "compile", planted)
    runs = tmp_path / "r"
    result = CliRunner().invoke(app, ["--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs),
                                      "--set", "prune.methods=['imp']", "--set", "run.compile='on'"])
    assert result.exit_code == 0, result.output
    (res,) = [json.loads(p.read_text()) for p in runs.glob("*/results.json")]
    assert [row["compiled"] for row in res["rounds"]] == [False, False, False]
    warned = [ln for ln in result.output.splitlines() if "torch.compile failed in round" in ln]
    assert len(warned) == 1 and "RuntimeError: planted: no C++ compiler" in warned[0] and "ran eagerly" in warned[0]
    events = [json.loads(ln) for ln in (runs / res["run_id"] / "events.jsonl").read_text().splitlines()]
    assert [e["round"] for e in events if e["kind"] == "compile_fallback"] == [1]


def test_rounds_that_ran_compiled_say_so(tmp_path, tiny_profile):
    from dpcore.experiment import Experiment

    (plain,) = Experiment.from_profile(str(tiny_profile), ["prune.methods=['random']"], runs_dir=tmp_path / "a").run()
    assert all(row.compiled is None for row in plain.rounds)  # no compile asked for: nothing written
    assert "compiled" not in json.loads((tmp_path / "a" / plain.run_id / "results.json").read_text())["rounds"][0]


def test_a_cuda_graph_capture_failure_is_recorded_in_the_round_rows_and_said_once_by_headless(monkeypatch, tmp_path,
                                                                                               tiny_profile):
    """A planted capture failure in the graphed inner loop (run here on the CPU with the GPU's calls stubbed): the
    steps go on eagerly, every distilled round row says cuda_graphs = false, headless warns once with the error."""
    from typer.testing import CliRunner

    import dpcore.graphed as graphed
    import dpcore.training as training
    from dptui.cli import app

    class PlantedGraph:
        def register_generator_state(self, generator):
            raise RuntimeError("planted: operation not permitted when stream is capturing")

    monkeypatch.setattr(training, "can_graph", lambda fast, device, schedule, capture_step: fast.cuda_graphs)
    monkeypatch.setattr(graphed.GraphedLoop, "_on_side_stream", lambda self, size, op: self.step(size, op))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", PlantedGraph)
    runs = tmp_path / "r"
    result = CliRunner().invoke(app, ["--headless", "--profile", str(tiny_profile), "--runs-dir", str(runs),
                                      "--set", "prune.methods=['distilled']"])
    assert result.exit_code == 0, result.output
    (res,) = [json.loads(p.read_text()) for p in runs.glob("*/results.json")]
    assert [row["cuda_graphs"] for row in res["rounds"]] == [False] * len(res["rounds"]) and res["rounds"]
    text = " ".join(result.output.split())  # Rich wraps the line at the terminal's width
    assert text.count("CUDA graph capture failed") == 1 and "warning: round 1: CUDA graph capture failed (RuntimeError: " \
        "planted: operation not permitted when stream is capturing); running eagerly; the rows say cuda_graphs = false" in text

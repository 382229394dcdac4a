"""Training speed, side by side in one process on the same data: the engine's hot loop (``dpcore.training.train``)
vs a seed-style PyTorch loop, the distilled inner loop, and the distillers.

A benchmark, not a test::

    python benchmarks/speed.py [--quick] [--json] [--device cuda] [--threads 2] [--dpcore /tmp/oldmain]

* Training workloads: LeNet-300-100 (3072 inputs, batch 128), ConvNet-32 and ConvNet-128 (batch 256) and
  AlexNet, on random CIFAR-shaped images made on the device (50k on CUDA, fewer on a CPU), masked after
  three 20% global magnitude-pruning rounds, Adam (lr 1.2e-3), one epoch per timed repetition.
  The engine keeps uint8 images and normalises each batch (``Dataset.prepare``); the seed-style loop is
  ``TensorDataset`` + ``DataLoader(shuffle=True)`` over pre-normalised float images (on the host, each
  batch copied to the device), ``torch.nn.utils.prune.custom_from_mask`` masks and ``torch.optim.Adam``.
  The engine is timed at every precision/compile setting that applies to the device (on CUDA compiled only
  for the fp32 ConvNets unless ``--all``: each compile takes tens of seconds there); its headline number
  (``engine_img_s``, ``ratio``) is fp32 with ``compile = "auto"`` as it resolves for a full-length training.
* The distilled inner loop: 100 synthetic images, per-sample DSA, SGD, via ``train_on_synthetic`` (steps/s; on
  CUDA each step one CUDA graph replay, the row's ``cuda_graphs``), against the same seed-style loop with
  host-seeded DSA.
* DM / GM / MTT distillation iterations/s with small settings, through ``DISTILLERS[name].distill``.

Every number is the median of 3 timed repetitions after a warm-up, with the device synchronised; the
engine and the seed-style loop alternate repetition by repetition. Compile warm-up is measured apart
(``compile_s``; "pays after" = compile_s / per-step time saved). ``--quick`` (<= 2 min on 2 CPU cores):
LeNet-300-100 and ConvNet-32 only, compiled only where ``compile = "auto"`` compiles. ``--dpcore PATH``
imports dpcore from another checkout and times only its fp32 default training (e.g. the old main beside
this one). Other jobs on the machine void the timings: the 1-min load average is printed at start and end.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="LeNet-300-100 and ConvNet-32 only (<= 2 min on 2 CPU cores)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per measurement (median reported)")
    ap.add_argument("--dpcore", metavar="PATH", help="import dpcore from this checkout; time only its fp32 default")
    ap.add_argument("--only", nargs="*", metavar="NAME", help="only these workloads (e.g. convnet-32 inner dm)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a compiled setting or a CUDA graph fell back to eager")
    ap.add_argument("--setting", action="append", metavar="PRECISION:COMPILE",
                    help="time only these engine settings, e.g. bf16:on (repeatable; default: every one that applies)")
    ap.add_argument("--channels-last", action="store_true", help="the engine's settings in channels-last format")
    ap.add_argument("--inner-model", default="convnet", choices=("convnet", "alexnet"),
                    help="the net of the distilled inner loop (ConvNet-128 on CUDA, ConvNet-32 on a CPU; or AlexNet)")
    ap.add_argument("--images", type=int, default=0, help="training images per timed epoch (0: 50k on CUDA)")
    ap.add_argument("--inner-epochs", type=int, default=0,
                    help="steps of a timed inner loop (0: 200 on CUDA, 20 on a CPU)")
    ap.add_argument("--all", action="store_true", help="on CUDA, also compile every precision of every workload")
    return ap.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else parse_args([])
if ARGS.dpcore:
    sys.path.insert(0, ARGS.dpcore)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.utils import prune as torch_prune  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import dpcore  # noqa: E402
from dpcore.data.dataset import Dataset  # noqa: E402
from dpcore.masks import full_mask, magnitude_prune  # noqa: E402
from dpcore.models import build_model  # noqa: E402
from dpcore.training import Schedule, Stopwatch, restore, snapshot, train  # noqa: E402

HAS_FAST = "fast" in inspect.signature(train).parameters
SHAPE, CLASSES, MEAN, STD = (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    options: dict
    batch: int
    cpu_images: int
    quick: bool = False

    def images(self, device: torch.device) -> int:
        if ARGS.images:
            return ARGS.images
        return 50_000 if device.type == "cuda" else self.cpu_images


WORKLOADS = (
    Workload("lenet-300-100", "lenet-300-100", {}, 128, 10_000, quick=True),
    Workload("convnet-32", "convnet", {"width": 32}, 256, 4096, quick=True),
    Workload("convnet-128", "convnet", {"width": 128}, 256, 1024),
    Workload("alexnet", "alexnet", {}, 256, 512),
)


@dataclass(frozen=True)
class Setting:
    precision: str = "fp32"
    compile: str = "off"

    @property
    def label(self) -> str:
        return f"{self.precision} compile={self.compile}" if HAS_FAST else "fp32 (its default)"

    def fast(self):
        from dpcore.training import FastPath
        return FastPath(precision=self.precision, compile=self.compile, channels_last=ARGS.channels_last)


def settings_for(device: torch.device, w: Workload) -> list[Setting]:
    """CPU: fp32 and bf16 (fp16 is a GPU format), each eager and compiled. CUDA: every precision eager, and
    fp32 compiled for the ConvNets (each compile costs tens of seconds there; ``--all`` compiles every one)."""
    if not HAS_FAST:
        return [Setting()]
    if ARGS.setting:
        return [Setting(*text.split(":", 1)) for text in ARGS.setting]
    if device.type != "cuda":
        return [Setting(p, c) for p in ("fp32", "bf16") for c in ("off", "on")]
    out = [Setting(p, "off") for p in ("fp32", "bf16", "fp16")]
    if ARGS.all:
        return out + [Setting(p, "on") for p in ("fp32", "bf16", "fp16")]
    return out + ([Setting("fp32", "on")] if w.model == "convnet" else [])


def headline(model: torch.nn.Module, device: torch.device) -> Setting:
    """fp32 with compile = "auto" as it resolves for a full-length training (see AUTO_COMPILE_MIN_SAMPLES)."""
    if not HAS_FAST:
        return Setting()
    from dpcore.training import FastPath
    return Setting("fp32", "on" if FastPath(compile="auto").compiles(model, device, 10**9) else "off")


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    watch = Stopwatch(device)
    fn()
    return watch.elapsed()


# ------------------------------------------------------------------------------------------ loops
def masked_model(w: Workload, device: torch.device):
    torch.manual_seed(0)
    model = build_model(w.model, num_classes=CLASSES, in_shape=SHAPE, **w.options).to(device)
    mask = full_mask(model)
    for r in range(1, 4):
        mask = magnitude_prune(model, mask, total_round=r, fraction=0.2, scope="global")
    return model, mask


def seedstyle_model(w: Workload, device: torch.device, mask):
    """The same initial model with torch.nn.utils.prune masks (a forward pre-hook per layer)."""
    model, _ = masked_model(w, device)
    for name, module in model.named_modules():
        if f"{name}.weight" in mask:
            torch_prune.custom_from_mask(module, "weight", mask[f"{name}.weight"])
    return model


def seedstyle_epoch(model, loader, opt, device, augment=None) -> int:
    model.train()
    steps = 0
    for i, (xb, yb) in enumerate(loader):
        xb, yb = xb.to(device), yb.to(device)
        if augment is not None:
            xb = augment(xb, i)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return steps


@dataclass
class Result:
    name: str
    kind: str  # "train", "inner", "distill"
    unit: str  # "img/s", "steps/s", "it/s"
    rows: dict[str, dict] = field(default_factory=dict)  # setting label -> {rate, compile_s, step_s}
    seedstyle: float | None = None
    headline: str = ""
    note: str = ""
    images_per_step: int = 0  # inner loop: images per step (for img/s)
    seed_times: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        eng = self.rows.get(self.headline, {}).get("rate")
        out: dict[str, Any] = {"kind": self.kind, "unit": self.unit, "engine_setting": self.headline}
        if self.kind == "distill":
            out["iterations_s"] = eng
        else:
            if self.kind == "inner":
                out["engine_steps_s"] = eng
                out["seedstyle_steps_s"] = self.seedstyle
                out["engine_img_s"] = None if eng is None else eng * self.images_per_step
                out["seedstyle_img_s"] = None if self.seedstyle is None else self.seedstyle * self.images_per_step
            else:
                out["engine_img_s"], out["seedstyle_img_s"] = eng, self.seedstyle
            out["ratio"] = None if not (eng and self.seedstyle) else eng / self.seedstyle
        out["settings"] = {k: {**v, "ratio": (v["rate"] / self.seedstyle) if self.seedstyle else None}
                           for k, v in self.rows.items()}
        if self.note:
            out["note"] = self.note
        return out


def random_data(n: int, device: torch.device, seed: int = 0):
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, device=device, generator=g)
    y = torch.randint(0, CLASSES, (n,), device=device, generator=g)
    return Dataset("random-cifar", x, y, x[:1], y[:1], CLASSES, MEAN, STD)


def bench_training(w: Workload, device: torch.device, reps: int, log) -> Result:
    ds = random_data(w.images(device), device)
    n = ds.x_train.shape[0]
    model, mask = masked_model(w, device)
    init = snapshot(model)
    schedule = Schedule("adam", 1.2e-3, 1, w.batch)
    settings = settings_for(device, w)
    res = Result(w.name, "train", "img/s", headline=headline(model, device).label)
    if ARGS.quick and res.headline.endswith("compile=off"):  # quick: no compiling where "auto" would not
        settings = [s for s in settings if s.compile == "off"]
    if ARGS.setting:  # only the settings asked for: the first is the headline
        res.headline = settings[0].label
    elif res.headline not in [s.label for s in settings]:
        settings.append(Setting())

    def engine_run(setting: Setting, x, y) -> Any:
        restore(model, init)
        kw = {"fast": setting.fast()} if HAS_FAST else {}
        return train(model, x, y, schedule=schedule, seed=0, prepare=ds.prepare, mask=mask, **kw)

    # The seed-style loop: host copies of the same images, normalised once.
    x_host = ds.prepare(ds.x_train).cpu()
    loader = DataLoader(TensorDataset(x_host, ds.y_train.cpu()), batch_size=w.batch, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    seed_model = seedstyle_model(w, device, mask)
    seed_init = {k: v.clone() for k, v in seed_model.state_dict().items()}

    def seed_run() -> None:
        seed_model.load_state_dict(seed_init)
        opt = torch.optim.Adam(seed_model.parameters(), lr=1.2e-3)
        seedstyle_epoch(seed_model, loader, opt, device)

    warm_n = min(n, 2 * w.batch)
    times: dict[str, list[float]] = {s.label: [] for s in settings}
    seed_times: list[float] = []
    for s in settings:  # warm-up (compiles here; the compile time is reported apart)
        out = engine_run(s, ds.x_train[:warm_n], ds.y_train[:warm_n])
        res.rows[s.label] = warm_row(out, log, f"{w.name} {s.label}")
        log(f"  {w.name}: warm-up {s.label} done (compile_s {res.rows[s.label]['compile_s']:.1f})")
    warm_loader = DataLoader(TensorDataset(x_host[:warm_n], ds.y_train[:warm_n].cpu()), batch_size=w.batch)
    seedstyle_epoch(seed_model, warm_loader, torch.optim.Adam(seed_model.parameters(), lr=1.2e-3), device)
    for rep in range(reps):  # alternate: engine settings, then the seed-style loop
        for s in settings:
            times[s.label].append(timed(lambda: engine_run(s, ds.x_train, ds.y_train), device))
        seed_times.append(timed(seed_run, device))
        log(f"  {w.name}: rep {rep + 1}/{reps} done")
    steps = -(-n // w.batch)
    res.seedstyle, res.seed_times = n / statistics.median(seed_times), seed_times
    for s in settings:
        t = statistics.median(times[s.label])
        res.rows[s.label].update(rate=n / t, step_s=t / steps, times_s=times[s.label])
    add_break_even(res)
    return res


def bench_inner_loop(device: torch.device, reps: int, log) -> Result:
    """train_on_synthetic on 100 images (ipc 10) with DSA, vs the seed-style loop with host-seeded DSA."""
    from dpcore.augment import DSA
    from dpcore.config import SyntheticConfig
    from dpcore.synthetic import SyntheticSet
    from dpcore.synthetic.evaluate import train_on_synthetic

    if ARGS.inner_model == "alexnet":
        w = Workload("inner", "alexnet", {}, 256, 100)
        name = "distilled inner loop (alexnet, 100 img)"
    else:
        w = Workload("inner", "convnet", {"width": 128 if device.type == "cuda" else 32}, 256, 100)
        name = f"distilled inner loop (convnet-{w.options['width']}, 100 img)"
    epochs = ARGS.inner_epochs or (200 if device.type == "cuda" else 20)
    g = torch.Generator(device=device).manual_seed(1)
    syn = SyntheticSet(torch.randn(100, *SHAPE, device=device, generator=g),
                       torch.arange(CLASSES, device=device).repeat_interleave(10), lr=None)
    sc = SyntheticConfig(epochs=epochs, batch_size=256, dsa=True, lr=0.01, use_learned_lr=False)
    model, mask = masked_model(w, device)
    init = snapshot(model)
    settings = [Setting("fp32", c) for c in ("off", "on")] if HAS_FAST else [Setting()]
    res = Result(name, "inner", "steps/s", headline=headline(model, device).label)
    if HAS_FAST and ARGS.setting:
        settings = [Setting(*text.split(":", 1)) for text in ARGS.setting]
        res.headline = settings[0].label
    res.images_per_step = 100

    def engine_run(s: Setting, sc_) -> Any:
        restore(model, init)
        kw = {"fast": s.fast()} if HAS_FAST else {}
        return train_on_synthetic(model, syn, sc_, seed=0, mask=mask, **kw)

    seed_model = seedstyle_model(w, device, mask)
    seed_init = {k: v.clone() for k, v in seed_model.state_dict().items()}
    loader = DataLoader(TensorDataset(syn.images.cpu(), syn.labels.cpu()), batch_size=256, shuffle=True)
    dsa = DSA(batchwise=False)

    def seed_run(e: int) -> None:
        seed_model.load_state_dict(seed_init)
        opt = torch.optim.SGD(seed_model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        for epoch in range(e):
            seedstyle_epoch(seed_model, loader, opt, device, augment=lambda xb, i: dsa(xb, seed=epoch * 1000 + i))

    for s in settings:  # warm-ups as long as a repetition: every DSA op has run once before the timing
        out = engine_run(s, sc)
        res.rows[s.label] = warm_row(out, log, f"inner loop {s.label}")
    seed_run(epochs)
    times = {s.label: [] for s in settings}
    seed_times = []
    for rep in range(reps):
        for s in settings:
            times[s.label].append(timed(lambda: engine_run(s, sc), device))
        seed_times.append(timed(lambda: seed_run(epochs), device))
        log(f"  inner loop: rep {rep + 1}/{reps} done")
    res.seedstyle, res.seed_times = epochs / statistics.median(seed_times), seed_times
    for s in settings:
        t = statistics.median(times[s.label])
        res.rows[s.label].update(rate=epochs / t, step_s=t / epochs, times_s=times[s.label])
    add_break_even(res)
    return res


def warm_row(out: Any, log, what: str) -> dict:
    """A setting's row from its warm-up: the compile warm-up, and a compile that fell back to eager (its rates
    are eager ones: the row says so, and ``--strict`` fails the benchmark). Compiling fails once per process and
    architecture, in the warm-up, so the timed repetitions after it run as the row says."""
    fallback = getattr(out, "fallback", None) or getattr(out, "graph_fallback", None)
    if fallback:
        print(f"warning: {what}: fell back to eager ({fallback}); its row is marked", file=sys.stderr, flush=True)
    return {"compile_s": float(getattr(out, "compile_s", 0.0)), "fallback": fallback,
            "cuda_graphs": getattr(out, "graphed", None)}


def add_break_even(res: Result) -> None:
    """``pays_after_steps`` of each compiled setting: its compile time over the per-step time it saves."""
    for label, row in res.rows.items():
        if label.endswith("compile=on"):
            eager = res.rows.get(label.replace("compile=on", "compile=off"))
            if eager is not None:
                saved = eager["step_s"] - row["step_s"]
                row["pays_after_steps"] = (row["compile_s"] / saved) if saved > 0 else None


DISTILL_PARAMS = {
    "dm": {"iterations": 10, "batch_real": 64},
    "gm": {"iterations": 2, "outer_loop": 2, "inner_loop": 2, "batch_real": 32, "batch_train": 64},
    "mtt": {"iterations": 5, "num_experts": 1, "expert_train_epochs": 2, "expert_epochs": 1, "max_start_epoch": 1,
            "syn_steps": 10, "expert_batch": 256},
}


def bench_distiller(method: str, device: torch.device, reps: int, log) -> Result:
    from dpcore.synthetic import DISTILLERS

    d = DISTILLERS[method]
    width = 128 if device.type == "cuda" else 32
    ds = random_data(5000 if device.type == "cuda" else 1000, device, seed=2)
    wanted = dict(DISTILL_PARAMS[method])
    if device.type == "cuda":
        wanted["iterations"] *= 5
    params = {k: v for k, v in wanted.items() if k in d.defaults}  # only keys the method still has
    factory = lambda: build_model("convnet", num_classes=CLASSES, in_shape=SHAPE, width=width)  # noqa: E731
    res = Result(f"{method} (convnet-{width}, ipc 10)", "distill", "it/s", headline="distill",
                 note=", ".join(f"{k}={v}" for k, v in params.items()))
    with tempfile.TemporaryDirectory(prefix="dpcore-speed-") as tmp:
        kw = {"workdir": tmp} if "workdir" in inspect.signature(d.distill).parameters else {}

        def run(iterations: int) -> None:
            d.distill(ds, ipc=10, model_factory=factory, seed=0, device=device,
                      params={**params, "iterations": iterations}, **kw)

        run(1)  # warm-up (MTT trains its experts here, once)
        times = []
        for rep in range(reps):
            times.append(timed(lambda: run(params["iterations"]), device))
        log(f"  {method}: done")
    res.rows["distill"] = {"rate": params["iterations"] / statistics.median(times), "times_s": times}
    return res


# ------------------------------------------------------------------------------------------ report
def render(report: dict, results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"dpcore speed on {report['device']} ({report['threads']} threads, torch {report['torch']})"
                        + (f" - dpcore from {report['dpcore']}" if ARGS.dpcore else ""))
    for col in ("workload", "engine setting", "engine", "seed-style", "ratio", "compile s", "pays after"):
        table.add_column(col, justify="left" if col in ("workload", "engine setting") else "right")
    for r in results:
        first = True
        for label, row in r.rows.items():
            mark = " *" if label == r.headline and r.kind != "distill" else ""
            mark += " EAGER FALLBACK" if row.get("fallback") else ""
            ratio = f"{row['rate'] / r.seedstyle:.2f}x" if r.seedstyle else ""
            pays = row.get("pays_after_steps")
            seed = f"{r.seedstyle:,.1f}" if r.seedstyle and r.seedstyle < 100 else f"{r.seedstyle or 0:,.0f}"
            table.add_row(r.name if first else "", (label + mark) if r.kind != "distill" else "settings below",
                          f"{row['rate']:,.1f} {r.unit}" if row["rate"] < 100 else f"{row['rate']:,.0f} {r.unit}",
                          seed if first and r.seedstyle else "", ratio, f"{row['compile_s']:.1f}" if row.get("compile_s") else "",
                          ("never" if pays is None else f"{pays:,.0f} steps") if "pays_after_steps" in row else "")
            first = False
        table.add_section()
    console = Console(width=max(Console().width, 132))
    console.print(table)
    for r in results:
        if r.kind == "distill":
            console.print(f"{r.name}: {r.note}")
    console.print("* the engine's headline: fp32, compile = auto as it resolves for a full-length training. "
                  "ratio = engine / seed-style (TensorDataset + DataLoader, torch.nn.utils.prune, torch.optim). "
                  f"Medians of {report['reps']}, device synchronised; compile s = warm-up beyond the steady step time, not in "
                  "the rates.")


def main() -> None:
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if ARGS.device == "auto" else ARGS.device)
    if ARGS.threads:
        torch.set_num_threads(ARGS.threads)
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if not ARGS.json else (lambda msg: None)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    only = set(ARGS.only or [])
    chosen = [w for w in WORKLOADS if (w.quick or not ARGS.quick) and (not only or w.name in only)]
    results: list[Result] = []
    for w in chosen:
        log(f"{w.name}: {w.images(device)} images, batch {w.batch}")
        results.append(bench_training(w, device, ARGS.reps, log))
    if not ARGS.quick and not ARGS.dpcore:
        if not only or "inner" in only:
            log("distilled inner loop")
            results.append(bench_inner_loop(device, ARGS.reps, log))
        for method in ("dm", "gm", "mtt"):
            if not only or method in only:
                log(f"distiller {method}")
                try:
                    results.append(bench_distiller(method, device, ARGS.reps, log))
                except Exception as err:  # noqa: BLE001 - a distiller's API changed: report, keep the rest
                    log(f"  {method} failed: {type(err).__name__}: {err}")
    report = {"device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "dpcore": str(getattr(dpcore, "__file__", "")).rsplit("/dpcore/", 1)[0],
              "quick": ARGS.quick, "wall_s": round(time.perf_counter() - t0, 1), "reps": ARGS.reps,
              "loadavg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)],  # start, end: other jobs void timings
              "workloads": {r.name: r.to_json() for r in results}}
    if device.type == "cuda":
        report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        report["channels_last"] = ARGS.channels_last
    fallbacks = [f"{r.name} {label}" for r in results for label, row in r.rows.items() if row.get("fallback")]
    report["fallbacks"] = fallbacks
    if ARGS.json:
        print(json.dumps(report))
    else:
        render(report, results)
        print(f"total {report['wall_s']:.0f} s; 1-min load average at start / end: "
              f"{report['loadavg_1min'][0]:.2f} / {report['loadavg_1min'][1]:.2f} (this run adds ~{report['threads']}; "
              "more means other jobs ran and the timings are void)")
    if fallbacks and ARGS.strict:
        print(f"--strict: torch.compile or a CUDA graph fell back to eager in {', '.join(fallbacks)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

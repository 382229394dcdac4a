"""``dptui distill``: make (or fetch from the cache) a profile's synthetic set, or evaluate it.

Without ``--evaluate`` the profile's distiller runs (or its cached result is reused) with a live
progress bar, the set is written in MTT's layout to ``--out`` if given, and the time-to-distill is
printed. With ``--evaluate`` the profile's model is trained on the profile's synthetic source (a
``synthetic.path`` or ``synthetic.method`` + ``ipc``) with the ``[synthetic]`` training settings and
tested on the real test split; ``--json`` prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpcore.errors import DataError, DPError


# --evaluate compiles the model's forward (torch.compile) on a CPU for a conv net trained for at least
# this many steps: ~1.7x less CPU time per ConvNet-128 step (fused norm/ReLU/pool), for ~20 s of
# compiling. An MLP gains nothing (its time is in matrix products) and pays the compile time.
_COMPILE_MIN_STEPS = 200


def _worth_compiling(model, sc, n_images: int, device) -> bool:
    import torch

    steps = sc.epochs * math.ceil(n_images / min(sc.batch_size, n_images))
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return device.type == "cpu" and has_conv and steps >= _COMPILE_MIN_STEPS


class Stopped(DPError):
    """Ctrl-C during a distillation or evaluation (exit 130)."""


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, transient=True, disable=not console.is_terminal)


def resolve_source_path(path: str, data_root: str | None, cfg_root: str) -> Path:
    """``synthetic.path`` as given, else under the data root (``--data-root``, ``data.root`` or ./data)."""
    given = Path(path).expanduser()
    if given.exists() or given.is_absolute():
        return given
    root = Path(data_root or cfg_root or "data").expanduser()
    under = root / given
    if under.exists():
        return under
    raise DataError(f"synthetic.path '{path}': not found (looked in ./{given} and {under}); "
                    "pass --data-root pointing at the folder that holds it, or an absolute path")


def _interruptible(console: Console):
    """A stop flag set by the first Ctrl-C (the second one aborts)."""
    stop = threading.Event()

    def on_sigint(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        console.print("[yellow]stopping after the current step (Ctrl-C again to abort)[/]")

    return stop, on_sigint


def run_distill(profile: str, method: Optional[str], ipc: Optional[int], overrides: list[str],
                runs_dir: Path, data_root: Optional[str], out: Optional[Path], do_evaluate: bool,
                as_json: bool, compile: Optional[bool] = None) -> dict[str, Any]:
    import torch

    from dpcore.engine import load_data, resolve_device
    from dpcore.models import build_model
    from dpcore.profiles import load_profile
    from dpcore.synthetic import get_or_distill, load_synthetic, save_synthetic
    from dpcore.synthetic.evaluate import evaluate_synthetic

    extra: list[str] = []
    if method is not None:
        base, _ = load_profile(profile)
        if method != base.synthetic.method:  # the profile's [synthetic.params] belong to its own method
            extra.append("synthetic.params={}")
        extra += [f"synthetic.method={json.dumps(method)}", 'synthetic.path=""']
    extra += overrides
    if ipc is not None:
        extra.append(f"synthetic.ipc={ipc}")
    cfg, _ = load_profile(profile, extra)
    sc = cfg.synthetic
    console = Console(stderr=True, highlight=False)
    say = console.print if console.is_terminal and not as_json else (lambda *a, **k: None)
    wall = time.perf_counter()

    device = resolve_device(cfg.run.device)
    say(f"loading {cfg.data.dataset}" + (" (ZCA)" if cfg.data.zca else "") + f" on {device} ...")
    ds = load_data(cfg, data_root, device)
    model_spec = {"name": cfg.model.name, **cfg.model.options}

    def factory() -> torch.nn.Module:
        return build_model(cfg.model.name, num_classes=ds.num_classes, in_shape=ds.shape,
                           **cfg.model.options).to(device)

    stop, on_sigint = _interruptible(console)
    old = signal.signal(signal.SIGINT, on_sigint) if threading.current_thread() is threading.main_thread() else None
    try:
        with _progress(console) as bar:
            if sc.path:
                src = resolve_source_path(sc.path, data_root, cfg.data.root)
                syn = load_synthetic(src, ds)
                source, cached, key = str(src), None, None
            else:
                task = bar.add_task(f"distill {sc.method} ipc{sc.ipc}", total=None, info="")

                def progress(done: int, total: int, loss: float | None) -> None:
                    if loss is None:  # MTT reports its expert trajectories' epochs without a loss
                        info = "training experts" if sc.method == "mtt" and done else ""
                    else:
                        info = f"loss {loss:.4g}" if math.isfinite(loss) else ""
                    bar.update(task, completed=done, total=total, info=info)

                syn, cached = get_or_distill(runs_dir / "cache" / "synthetic", ds, method=sc.method, ipc=sc.ipc,
                                             model=model_spec, model_factory=factory, seed=sc.seed,
                                             device=device, params=dict(sc.params), progress=progress,
                                             should_stop=stop.is_set)
                if syn.meta.get("stopped"):
                    raise Stopped("distillation stopped by Ctrl-C (nothing was cached)")
                bar.remove_task(task)
                source, key = f"{sc.method} ipc{sc.ipc}", syn.meta.get("key")
            counts = syn.class_counts(ds.num_classes)
            result: dict[str, Any] = {
                "source": source, "method": syn.meta.get("method", "file"),
                "ipc": counts[0] if len(set(counts)) == 1 else None, "images": len(syn),
                "dataset": ds.name, "whitened": bool(ds.whitened), "cached": cached, "key": key,
                "distill_s": syn.meta.get("distill_s"), "learned_lr": syn.lr,
            }
            if do_evaluate:
                task = bar.add_task(f"train {cfg.model.name} on {len(syn)} images", total=sc.epochs, info="")

                def on_epoch(epoch: int, epochs: int, loss: torch.Tensor) -> None:
                    bar.update(task, completed=epoch, info=f"loss {float(loss):.3f}")

                use_compile = compile if compile is not None else _worth_compiling(factory(), sc, len(syn), device)
                ev = evaluate_synthetic(syn, ds, factory, sc, seed=cfg.run.seeds[0],
                                        eval_batch_size=cfg.run.eval_batch_size, on_epoch=on_epoch,
                                        should_stop=stop.is_set, compile=use_compile)
                result.update(test_acc=ev.test_acc, test_loss=ev.test_loss, train_s=ev.train_s, test_s=ev.test_s,
                              model=cfg.model.name, model_options=dict(cfg.model.options), epochs=ev.epochs,
                              steps=ev.steps, lr=ev.lr, batch_size=sc.batch_size, momentum=sc.momentum,
                              weight_decay=sc.weight_decay, dsa=sc.dsa, seed=cfg.run.seeds[0],
                              compiled=use_compile)
                syn.meta["evaluation"] = {k: result[k] for k in ("test_acc", "train_s", "model", "model_options",
                                                                 "epochs", "lr", "batch_size", "dsa", "seed")}
                syn.meta["test_acc"] = ev.test_acc
    except KeyboardInterrupt:
        raise Stopped("stopped by Ctrl-C") from None
    except Exception as err:
        from dpcore.training import Stopped as TrainingStopped

        if isinstance(err, TrainingStopped):
            raise Stopped("evaluation stopped by Ctrl-C") from None
        raise
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if out is not None:
        save_synthetic(syn, out)
        result["out"] = str(out)
    result.update(device=str(device), threads=torch.get_num_threads(), wall_s=time.perf_counter() - wall)
    return result


def _report(result: dict[str, Any], console: Console) -> None:
    t = result.get("distill_s")
    how = "reused from the cache" if result["key"] and result["cached"] else ("made now" if result["key"] else "loaded")
    console.print(f"synthetic set: {result['source']} ({result['images']} images, ipc {result['ipc']}, "
                  f"{result['dataset']}{' ZCA' if result['whitened'] else ''}), {how}"
                  + (f"; learned lr {result['learned_lr']:.4g}" if result["learned_lr"] else ""))
    console.print(f"time-to-distill: {t:.1f}s" if t is not None else "time-to-distill: n/a (made elsewhere)")
    if "test_acc" in result:
        console.print(f"test accuracy of {result['model']} trained on it: {100 * result['test_acc']:.2f}% "
                      f"({result['epochs']} epochs at lr {result['lr']:.4g}, train {result['train_s']:.1f}s, "
                      f"test {result['test_s']:.1f}s)")
    if result.get("out"):
        console.print(f"written to {result['out']}/")
    console.print(f"[dim]wall {result['wall_s']:.1f}s on {result['device']}[/]")


def register(app: typer.Typer) -> None:
    from .cli import DataOpt, ProfileOpt, RunsOpt, SetOpt, runs_path

    @app.command("distill")
    def distill_command(profile: str = ProfileOpt,
                        method: Optional[str] = typer.Option(None, "--method", "-m", help="distiller (dm, mtt, gm, random-subset); replaces the profile's synthetic source"),
                        ipc: Optional[int] = typer.Option(None, "--ipc", help="images per class"),
                        overrides: Optional[list[str]] = SetOpt, runs_dir: Optional[Path] = RunsOpt,
                        data_root: Optional[str] = DataOpt,
                        out: Optional[Path] = typer.Option(None, "--out", help="write the set here in MTT's layout (+ lr_best.pt, meta.json)"),
                        evaluate: bool = typer.Option(False, "--evaluate", help="train the profile's model on the set (DSA) and test it on the real test split"),
                        as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
                        compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=f"torch.compile the model for --evaluate (default: for a conv net on a CPU trained >= {_COMPILE_MIN_STEPS} steps)")) -> None:
        """Make (or reuse) the profile's synthetic set; with --evaluate, measure how well a model trains on it."""
        try:
            result = run_distill(profile, method, ipc, overrides or [], runs_path(runs_dir), data_root, out,
                                 evaluate, as_json, compile)
        except Stopped as err:
            Console(stderr=True, highlight=False).print(f"stopped: {err}", markup=False)
            raise typer.Exit(130) from None
        if as_json:
            sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
        else:
            _report(result, Console(highlight=False))

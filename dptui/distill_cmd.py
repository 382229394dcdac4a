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
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpcore.errors import ConfigError, DPError

from .interrupt import catch_ctrl_c
from .options import DataOpt, ProfileOpt, RunsOpt, SetOpt, runs_path


class Stopped(DPError):
    """Ctrl-C during a distillation or evaluation (exit 130)."""


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console, transient=True, disable=not console.is_terminal)


def run_distill(profile: str, method: Optional[str], ipc: Optional[int], overrides: list[str],
                runs_dir: Path, data_root: Optional[str], out: Optional[Path], do_evaluate: bool,
                as_json: bool, compile: Optional[bool] = None, variant: Optional[str] = None) -> dict[str, Any]:
    import torch

    from dpcore.parallel import set_threads
    from dpcore.synthetic import save_synthetic
    from dpcore.synthetic.provider import synthetic_cache_dir
    from dpcore.synthetic.workflow import choose_source, evaluate_set, make_set
    from dpcore.training import Stopped as TrainingStopped
    from dpcore.validate import check_model, check_runs_dir, check_source, load_data, resolve_device

    src = choose_source(profile, overrides, variant=variant, method=method, ipc=ipc)
    cfg, sc = src.cfg, src.synthetic
    console = Console(stderr=True, highlight=False)
    say = console.print if console.is_terminal and not as_json else (lambda *a, **k: None)
    wall = time.perf_counter()
    device = resolve_device(cfg.run.device)
    set_threads(cfg.run.threads)
    check_runs_dir(runs_dir)
    say(f"loading {cfg.data.dataset}" + (" (ZCA)" if cfg.data.zca else "") + f" on {device} ...")
    ds = load_data(cfg, data_root, device)
    check_model(cfg, ds)
    if not sc.path:  # a file is checked as it loads, below
        check_source(sc, "[synthetic]", ds, data_root or cfg.data.root)
    stop, restore_sigint = catch_ctrl_c(console)
    try:
        with _progress(console) as bar:
            task = bar.add_task(f"distill {sc.method} ipc{sc.ipc}", total=None, info="", visible=not sc.path)

            def progress(done: int, total: int, loss: float | None) -> None:
                if loss is None:  # MTT reports its expert trajectories' epochs without a loss
                    info = "training experts" if sc.method == "mtt" and done else ""
                else:
                    info = f"loss {loss:.4g}" if math.isfinite(loss) else ""
                bar.update(task, completed=done, total=total, info=info)

            try:
                syn, result = make_set(src, ds, runs_dir, data_root, progress=progress, should_stop=stop.is_set)
            except TrainingStopped:
                raise Stopped("distillation stopped by Ctrl-C (nothing was cached)") from None
            bar.remove_task(task)
            if do_evaluate:
                tasks: dict[int, Any] = {}

                def on_epoch(seed: int, epoch: int, epochs: int, loss: torch.Tensor) -> None:
                    if seed not in tasks:
                        for t in tasks.values():
                            bar.remove_task(t)
                        tasks.clear()
                        tasks[seed] = bar.add_task(f"train {cfg.model.name} on {len(syn)} images, seed {seed}",
                                                   total=epochs, info="")
                    bar.update(tasks[seed], completed=epoch, info=f"loss {float(loss):.3f}")

                entry = synthetic_cache_dir(runs_dir) / result["key"] if result["key"] else None
                try:
                    mode = None if compile is None else ("on" if compile else "off")
                    result.update(evaluate_set(syn, src, ds, compile=mode, on_epoch=on_epoch,
                                               should_stop=stop.is_set, cache_entry=entry))
                except TrainingStopped:
                    raise Stopped("evaluation stopped by Ctrl-C") from None
    except KeyboardInterrupt:
        raise Stopped("stopped by Ctrl-C") from None
    finally:
        restore_sigint()
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
        n = len(result["test_accs"])
        spread = f"±{100 * result['test_acc_std']:.2f} over seeds {', '.join(map(str, result['seeds']))}" if n > 1 else ""
        console.print(f"test accuracy of {result['model']} trained on it: {100 * result['test_acc']:.2f}%{spread} "
                      f"({result['epochs']} epochs at lr {result['lr']:.4g}, train {result['train_s']:.1f}s"
                      f"{' each' if n > 1 else ''}, test {result['test_s']:.1f}s)")
    if result.get("out"):
        console.print(f"written to {result['out']}/")
    console.print(f"[dim]wall {result['wall_s']:.1f}s on {result['device']}[/]")


def sources_table(results: list[dict[str, Any]]):
    """Every synthetic source of a profile (``--variant all``) as one row-model table."""
    from dpcore.summary import Column, Stat, Table

    cols = [Column("variant", "source", "text"), Column("method", "method", "text"), Column("ipc", "ipc", "int"),
            Column("images", "images", "int"), Column("distill_s", "distill s", "sec"),
            Column("cached", "cached", "text")]
    evaluated = any("test_acc" in r for r in results)
    if evaluated:
        cols += [Column("lr", "train lr", "num"), Column("test_acc", "test acc%", "pct"),
                 Column("train_s", "train s", "sec"), Column("seeds", "seeds", "int")]
    table = Table("Synthetic sources", cols)
    for r in results:
        table.rows.append({"variant": r["variant"], "method": r["method"], "ipc": r["ipc"], "images": r["images"],
                           "distill_s": r["distill_s"], "cached": "yes" if r["cached"] else "",
                           "lr": r.get("lr"), "test_acc": Stat.of(r.get("test_accs", [])), "train_s": r.get("train_s"),
                           "seeds": len(r.get("test_accs", []))})
    if evaluated:
        r = next(r for r in results if "test_acc" in r)
        table.notes.append(f"test acc = {r['model']} trained on each set ({r['epochs']} epochs, SGD, DSA="
                           f"{'on' if r['dsa'] else 'off'}; train lr = the set's learned lr if it has one), "
                           "tested on the real test split; mean±std over seeds")
    table.notes.append("distill s = time-to-distill when the set was made (a cached set was made by an earlier run)")
    return table


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill_command(
            profile: str = ProfileOpt,
            method: Optional[str] = typer.Option(
                None, "--method", "-m",
                help="distiller (dm, mtt, gm, random-subset, el2n); replaces the profile's synthetic source"),
            ipc: Optional[int] = typer.Option(None, "--ipc", min=1, help="images per class"),
            variant: Optional[str] = typer.Option(
                None, "--variant", help="one of the profile's synthetic.variants, by label (e.g. 'dm ipc10'), or 'all'"),
            overrides: Optional[list[str]] = SetOpt, runs_dir: Optional[Path] = RunsOpt,
            data_root: Optional[str] = DataOpt,
            out: Optional[Path] = typer.Option(
                None, "--out", help="write the set here in MTT's layout (+ lr_best.pt, meta.json)"),
            evaluate: bool = typer.Option(
                False, "--evaluate", help="train the profile's model on the set (DSA) and test it on the real test split"),
            as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
            compile: Optional[bool] = typer.Option(
                None, "--compile/--no-compile",
                help="torch.compile the training step for --evaluate (default: run.compile, whose 'auto' compiles "
                     "ConvNets trained on a CPU)")) -> None:
        """Make (or reuse) the profile's synthetic set; with --evaluate, measure how well a model trains on it.
        With --variant all, every synthetic source of a comparison profile, summed up in one table."""
        labels: list[Optional[str]] = [variant]
        if variant == "all":
            from dpcore.config import synthetic_variants
            from dpcore.profiles import load_profile

            if out is not None:
                raise ConfigError("--out writes one set; it cannot be combined with --variant all")
            labels = [v.label for v in synthetic_variants(load_profile(profile, overrides or [])[0])]
        results = []
        for label in labels:
            try:
                result = run_distill(profile, method, ipc, overrides or [], runs_path(runs_dir), data_root, out,
                                     evaluate, as_json, compile, label if label else None)
            except Stopped as err:
                Console(stderr=True, highlight=False).print(f"stopped: {err}", markup=False)
                raise typer.Exit(130) from None
            if variant != "all":
                if as_json:
                    sys.stdout.write(json.dumps(result, sort_keys=True, default=str) + "\n")
                else:
                    _report(result, Console(highlight=False))
                return
            results.append({**result, "variant": label})
            Console(stderr=True, highlight=False).print(
                f"{label}: done" + (f", test acc {100 * result['test_acc']:.2f}%" if "test_acc" in result else ""))
        if as_json:
            sys.stdout.write(json.dumps(results, sort_keys=True, default=str) + "\n")
        else:
            from .export import to_rich

            Console(highlight=False).print(to_rich(sources_table(results)))

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
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dpcore.errors import ConfigError, DataError, DPError

from .interrupt import catch_ctrl_c


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


def record_evaluation(entry: Path, evaluation: dict[str, Any]) -> None:
    from dpcore.synthetic.files import META_FILE, save_meta

    path = entry / META_FILE
    if path.is_file():
        meta = json.loads(path.read_text(encoding="utf-8"))
        save_meta({**meta, "evaluation": evaluation, "test_acc": evaluation["test_acc"]}, entry)


def pick_variant(cfg, variant: Optional[str], method: Optional[str], ipc: Optional[int]):
    """The profile's synthetic source to use: ``[synthetic]``, or one of its ``synthetic.variants``
    chosen by label (``--variant``) or by ``--method`` (+ ``--ipc``). None: ``--method`` names a
    distiller the variants do not have (it then replaces the source with its default parameters)."""
    from dpcore.config import synthetic_variants

    variants = synthetic_variants(cfg)
    labels = ", ".join(repr(v.label) for v in variants)
    if variant is not None:
        if not variants[0].label:
            raise ConfigError(f"--variant {variant!r}: the profile has no synthetic.variants; "
                              "use --method/--ipc to choose a source")
        found = [v for v in variants if v.label == variant]
        if not found:
            raise ConfigError(f"--variant {variant!r} is not a synthetic source of the profile; it has {labels}")
        return found[0]
    if not variants[0].label:
        replaced = method is not None and (method != cfg.synthetic.method or bool(cfg.synthetic.path))
        return None if replaced else variants[0]
    if method is None:
        raise ConfigError(f"the profile compares {len(variants)} synthetic sources; choose one with "
                          f"--variant ({labels}) or --method")
    found = [v for v in variants if v.config.method == method and not v.config.path
             and (ipc is None or v.config.ipc == ipc)]
    if len(found) > 1:
        raise ConfigError(f"--method {method}: several synthetic sources match; choose one with --variant "
                          f"({', '.join(repr(v.label) for v in found)})")
    return found[0] if found else None


def run_distill(profile: str, method: Optional[str], ipc: Optional[int], overrides: list[str],
                runs_dir: Path, data_root: Optional[str], out: Optional[Path], do_evaluate: bool,
                as_json: bool, compile: Optional[bool] = None, variant: Optional[str] = None) -> dict[str, Any]:
    import torch

    from dpcore.engine import apply_threads, load_data, resolve_device
    from dpcore.models import build_model
    from dpcore.profiles import load_profile
    from dpcore.synthetic import get_or_distill, load_synthetic, save_synthetic
    from dpcore.summary import Stat
    from dpcore.synthetic.evaluate import evaluate_synthetic

    cfg, _ = load_profile(profile, overrides)
    chosen = pick_variant(cfg, variant, method, ipc)
    if chosen is None:  # --method names another distiller: its defaults, not the profile's params (--set may add)
        cfg, _ = load_profile(profile, ["synthetic.params={}", f"synthetic.method={json.dumps(method)}",
                                        'synthetic.path=""', "synthetic.variants=[]", *overrides])
        chosen = pick_variant(cfg, None, None, None)
    sc = replace(chosen.config, variants=[])
    if ipc is not None:
        sc = replace(sc, ipc=ipc)
    console = Console(stderr=True, highlight=False)
    say = console.print if console.is_terminal and not as_json else (lambda *a, **k: None)
    wall = time.perf_counter()

    device = resolve_device(cfg.run.device)
    apply_threads(cfg)
    say(f"loading {cfg.data.dataset}" + (" (ZCA)" if cfg.data.zca else "") + f" on {device} ...")
    ds = load_data(cfg, data_root, device)
    model_spec = {"name": cfg.model.name, **cfg.model.options}

    def factory() -> torch.nn.Module:
        return build_model(cfg.model.name, num_classes=ds.num_classes, in_shape=ds.shape,
                           **cfg.model.options).to(device)

    stop, restore_sigint = catch_ctrl_c(console)
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
            result: dict[str, Any] = {
                "source": source, "method": syn.meta.get("method", "file"),
                "ipc": syn.ipc(ds.num_classes), "images": len(syn),
                "dataset": ds.name, "whitened": bool(ds.whitened), "cached": cached, "key": key,
                "distill_s": syn.meta.get("distill_s"), "learned_lr": syn.lr,
            }
            if do_evaluate:  # one training per run seed; test_acc is their mean
                use_compile = compile if compile is not None else _worth_compiling(factory(), sc, len(syn), device)
                evals = []
                for seed in cfg.run.seeds:
                    task = bar.add_task(f"train {cfg.model.name} on {len(syn)} images, seed {seed}",
                                        total=sc.epochs, info="")

                    def on_epoch(epoch: int, epochs: int, loss: torch.Tensor) -> None:
                        bar.update(task, completed=epoch, info=f"loss {float(loss):.3f}")

                    evals.append(evaluate_synthetic(syn, ds, factory, sc, seed=seed,
                                                    eval_batch_size=cfg.run.eval_batch_size, on_epoch=on_epoch,
                                                    should_stop=stop.is_set, compile=use_compile))
                    bar.remove_task(task)
                accs = [ev.test_acc for ev in evals]
                stat = Stat.of(accs)
                mean = stat.mean
                result.update(test_acc=mean, test_acc_std=stat.std, test_accs=accs, seeds=list(cfg.run.seeds),
                              test_loss=sum(ev.test_loss for ev in evals) / len(evals),
                              train_s=sum(ev.train_s for ev in evals) / len(evals), test_s=evals[0].test_s,
                              model=cfg.model.name, model_options=dict(cfg.model.options), epochs=evals[0].epochs,
                              steps=evals[0].steps, lr=evals[0].lr, batch_size=sc.batch_size, momentum=sc.momentum,
                              weight_decay=sc.weight_decay, dsa=sc.dsa, compiled=use_compile)
                syn.meta["evaluation"] = {k: result[k] for k in ("test_acc", "test_accs", "train_s", "model",
                                                                 "model_options", "epochs", "lr", "batch_size",
                                                                 "dsa", "seeds")}
                syn.meta["test_acc"] = mean
                if key is not None:  # a cached set: its meta.json records the latest evaluation
                    record_evaluation(runs_dir / "cache" / "synthetic" / key, syn.meta["evaluation"])
    except KeyboardInterrupt:
        raise Stopped("stopped by Ctrl-C") from None
    except Exception as err:
        from dpcore.training import Stopped as TrainingStopped

        if isinstance(err, TrainingStopped):
            raise Stopped("evaluation stopped by Ctrl-C") from None
        raise
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
                           f"{'on' if r['dsa'] else 'off'}; train lr = the set's learned lr if it has one), tested on the real test "
                           "split; mean±std over seeds")
    table.notes.append("distill s = time-to-distill when the set was made (a cached set was made by an earlier run)")
    return table


def register(app: typer.Typer) -> None:
    from .cli import DataOpt, ProfileOpt, RunsOpt, SetOpt, runs_path

    @app.command("distill")
    def distill_command(profile: str = ProfileOpt,
                        method: Optional[str] = typer.Option(None, "--method", "-m", help="distiller (dm, mtt, gm, random-subset); replaces the profile's synthetic source"),
                        ipc: Optional[int] = typer.Option(None, "--ipc", min=1, help="images per class"),
                        variant: Optional[str] = typer.Option(None, "--variant", help="one of the profile's synthetic.variants, by label (e.g. 'dm ipc10'), or 'all'"),
                        overrides: Optional[list[str]] = SetOpt, runs_dir: Optional[Path] = RunsOpt,
                        data_root: Optional[str] = DataOpt,
                        out: Optional[Path] = typer.Option(None, "--out", help="write the set here in MTT's layout (+ lr_best.pt, meta.json)"),
                        evaluate: bool = typer.Option(False, "--evaluate", help="train the profile's model on the set (DSA) and test it on the real test split"),
                        as_json: bool = typer.Option(False, "--json", help="print one JSON object on stdout"),
                        compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help=f"torch.compile the model for --evaluate (default: for a conv net on a CPU trained >= {_COMPILE_MIN_STEPS} steps)")) -> None:
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

"""Typed experiment configuration, validated from plain dicts (parsed TOML + ``--set`` overrides).

Every problem is reported as one :class:`ConfigError` line naming where it came from, the key and
what is allowed.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable

from .errors import ConfigError

Check = Callable[[Any], str | None]  # returns an error text ("must be > 0") or None


def spec(default: Any = MISSING, *, kind: type | tuple = object, check: Check | None = None,
         default_factory: Any = MISSING, help: str = "") -> Any:
    meta = {"kind": kind, "check": check, "help": help}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def positive(x: Any) -> str | None:
    return None if x > 0 else "must be > 0"


def at_least(lo: float) -> Check:
    return lambda x: None if x >= lo else f"must be >= {lo}"


def open_unit(x: Any) -> str | None:
    return None if 0 < x < 1 else "must be between 0 and 1 (exclusive)"


def unit_left_closed(x: Any) -> str | None:
    return None if 0 <= x < 1 else "must be in [0, 1)"


def one_of(*allowed: str) -> Check:
    return lambda x: None if x in allowed else "must be one of " + ", ".join(repr(a) for a in allowed)


def subset_of(*allowed: str, names: Callable[[], list[str]] | None = None) -> Check:
    """A non-empty list of distinct names from ``allowed`` (or from ``names()``, read when checked)."""
    def check(xs: list) -> str | None:
        allowed_now = names() if names is not None else allowed
        bad = [x for x in xs if x not in allowed_now]
        if bad or not xs:
            return "must be a non-empty list of " + ", ".join(repr(a) for a in allowed_now)
        if len(set(xs)) != len(xs):
            return "must not repeat a method"
        return None
    return check


def names_from(allowed: tuple[str, ...], what: str) -> Check:
    """A list of distinct names drawn from ``allowed`` (empty allowed): one line naming the allowed values."""
    def check(xs: list) -> str | None:
        choices = ", ".join(repr(a) for a in allowed)
        bad = next((x for x in xs if x not in allowed), None)
        if bad is not None:
            near = difflib.get_close_matches(bad, allowed, n=1) if isinstance(bad, str) else []
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            return f"has unknown {what} {bad!r}{hint}; allowed: {choices}"
        if len(set(xs)) != len(xs):
            return f"must not repeat a {what}"
        return None
    return check


def ints_at_least(lo: int) -> Check:
    def check(xs: list) -> str | None:
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= lo for x in xs):
            return f"must be a list of integers >= {lo}"
        return None
    return check


def non_empty_ints(xs: list) -> str | None:
    if not xs:
        return "must list at least one seed"
    if len(set(xs)) != len(xs):
        return "must not repeat a seed"
    return ints_at_least(0)(xs)


def device_name(x: str) -> str | None:
    if x in ("auto", "cpu", "cuda") or (x.startswith("cuda:") and x[5:].isdigit()):
        return None
    return "must be 'auto', 'cpu', 'cuda' or 'cuda:N'"


LOG_SINKS = ("tensorboard", "wandb")  # [run] log: where a run's metrics are also written (dpcore.sinks)
DEFAULT_METHODS = ("imp", "distilled", "random")


def registered_methods() -> list[str]:
    """The pruning methods of :mod:`dpcore.methods` (built in, or registered by the user)."""
    from .methods import method_names

    return method_names()


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = spec("experiment", kind=str, help="a short name shown in tables and exports")
    description: str = spec("", kind=str)


@dataclass(frozen=True)
class DataConfig:
    dataset: str = spec("mnist-embedded", kind=str,
                        help="mnist-embedded, mnist, fashion-mnist, cifar10, cifar100, imagefolder, npz")
    root: str = spec("", kind=str, help="data root (overridden by --data-root); '' means ./data")
    path: str = spec("", kind=str, help="file or folder for imagefolder / npz datasets")
    zca: bool = spec(False, kind=bool, help="ZCA-whiten images as MTT does (kornia eps 0.1)")
    augment: bool = spec(True, kind=bool, help="random crop + flip on real training data for CIFAR-like sets")
    subset: int = spec(0, kind=int, check=at_least(0), help="train on this many images per class (0 = all)")


@dataclass(frozen=True)
class ModelConfig:
    name: str = spec("lenet-300-100", kind=str)
    options: dict = spec(default_factory=dict, kind=dict, help="model options, e.g. width, depth, norm")


@dataclass(frozen=True)
class TrainConfig:
    """Training on real data (IMP's inner loop, the dense baseline and every validation)."""

    optimizer: str = spec("adam", kind=str, check=one_of("sgd", "adam"))
    lr: float = spec(1.2e-3, kind=float, check=positive)
    batch_size: int = spec(128, kind=int, check=at_least(1))
    epochs: int = spec(10, kind=int, check=at_least(1))
    momentum: float = spec(0.9, kind=float, check=unit_left_closed)
    weight_decay: float = spec(0.0, kind=float, check=at_least(0))
    milestones: list = spec(default_factory=list, kind=list, check=ints_at_least(1))
    gamma: float = spec(0.1, kind=float, check=lambda x: None if 0 < x <= 1 else "must be in (0, 1]")
    warmup: int = spec(0, kind=int, check=at_least(0),
                       help="epochs of linear learning-rate warm-up from lr/steps to lr (0 = none; part of a run's "
                            "identity when set)")


@dataclass(frozen=True)
class SyntheticConfig:
    """The distilled method's inner loop: where the synthetic set comes from and how to train on it."""

    method: str = spec("dm", kind=str, help="distiller used when path is empty")
    path: str = spec("", kind=str, help="an MTT folder (images_best.pt + labels_best.pt) or a .pt/.npz file")
    ipc: int = spec(10, kind=int, check=at_least(1))
    seed: int = spec(0, kind=int, check=at_least(0), help="distillation seed (one set per dataset, shared by all run seeds)")
    params: dict = spec(default_factory=dict, kind=dict, help="distiller hyperparameters")
    epochs: int = spec(300, kind=int, check=at_least(1))
    lr: float = spec(0.01, kind=float, check=positive)
    use_learned_lr: bool = spec(True, kind=bool, help="use the set's learned lr when it has one")
    batch_size: int = spec(256, kind=int, check=at_least(1))
    momentum: float = spec(0.9, kind=float, check=unit_left_closed)
    weight_decay: float = spec(5e-4, kind=float, check=at_least(0))
    dsa: bool = spec(True, kind=bool, help="DSA augmentation on every synthetic batch")
    variants: list = spec(default_factory=list, kind=list, check=lambda xs: None if all(isinstance(x, dict) for x in xs)
                          else "must be a list of tables, e.g. [{method = \"dm\", ipc = 10}]",
                          help="compare synthetic sources: one distilled run per table of [synthetic] keys "
                               "(plus an optional name); params and path are not inherited")


@dataclass(frozen=True)
class PruneConfig:
    methods: list = spec(default_factory=lambda: list(DEFAULT_METHODS), kind=list,
                         check=subset_of(names=registered_methods),
                         help="imp, distilled, random; snip, grasp, synflow (pruning at initialisation)")
    rounds: int = spec(10, kind=int, check=at_least(1))
    fraction: float = spec(0.2, kind=float, check=open_unit)
    output_fraction: float = spec(-1.0, kind=float, check=lambda x: None if x == -1 or 0 <= x < 1
                                  else "must be in [0, 1), or -1 for the same as fraction")
    scope: str = spec("global", kind=str, check=one_of("global", "layer"))
    rewind: int = spec(0, kind=int, check=at_least(0), help="rewind point k (0 = initialisation)")
    rewind_unit: str = spec("epoch", kind=str, check=one_of("epoch", "step"))
    validate: str = spec("every", kind=str, check=one_of("every", "final", "none"),
                         help="train each round's mask on real data and test it (Figure 1)")
    score_batches: int = spec(1, kind=int, check=at_least(1), help="real batches SNIP and GraSP score on")
    score_batch_size: int = spec(256, kind=int, check=at_least(1), help="images per SNIP/GraSP scoring batch")
    synflow_iterations: int = spec(100, kind=int, check=at_least(1), help="SynFlow's pruning iterations per mask")
    grasp_temperature: float = spec(200.0, kind=float, check=positive, help="GraSP's softmax temperature")


@dataclass(frozen=True)
class AnalysisConfig:
    """The paper's analyses, run after a run's rounds (section 3.3 and appendix B). Empty = none."""

    instability_rounds: list = spec(default_factory=list, kind=list, check=ints_at_least(0),
                                    help="rounds whose mask gets the instability analysis (0 = the dense net)")
    instability_rewinds: list = spec(default_factory=list, kind=list, check=ints_at_least(0),
                                     help="rewind points for it, in prune.rewind_unit ([] = the run's own rewind)")
    alphas: int = spec(11, kind=int, check=at_least(3), help="interpolation points from 0 to 1 (>= 11 for a figure)")
    bn_recompute: bool = spec(False, kind=bool, help="recompute BatchNorm statistics on training data at each alpha")
    histogram_rounds: list = spec(default_factory=list, kind=list, check=ints_at_least(1),
                                  help="rounds whose surviving weights' initial values are histogrammed")
    bins: int = spec(40, kind=int, check=at_least(2), help="histogram bins per layer")
    figures: bool = spec(False, kind=bool, help="write PNG + SVG figures into <run>/figures")
    hessian_rounds: list = spec(default_factory=list, kind=list, check=ints_at_least(0),
                                help="rounds whose trained ticket gets its top Hessian eigenvalue (0 = the dense net)")
    hessian_iterations: int = spec(20, kind=int, check=at_least(1), help="power iterations (Hessian-vector products)")
    hessian_batches: int = spec(4, kind=int, check=at_least(1), help="fixed real training batches the Hessian is of")
    landscape_rounds: list = spec(default_factory=list, kind=list, check=ints_at_least(0),
                                  help="rounds whose trained ticket gets a 2-D loss slice (filter-normalised directions)")
    landscape_grid: int = spec(11, kind=int, check=at_least(3), help="points per axis of the slice")
    landscape_span: float = spec(1.0, kind=float, check=positive, help="the slice spans -span..span on each axis")

    @property
    def requested(self) -> bool:
        """True when an analysis adds results (instability, histograms), so it is part of a run's identity.
        Figures only draw those results: they are written into results.json too, but do not change the id."""
        return bool(self.instability_rounds or self.histogram_rounds or self.hessian_rounds or self.landscape_rounds)


@dataclass(frozen=True)
class RunConfig:
    seeds: list = spec(default_factory=lambda: [0], kind=list, check=non_empty_ints)
    device: str = spec("auto", kind=str, check=device_name)
    eval_batch_size: int = spec(2048, kind=int, check=at_least(1))
    threads: int = spec(0, kind=int, check=at_least(0),
                        help="CPU threads for torch (0 = torch's default); CPU results depend on it, so a set "
                             "value is part of each run's identity")
    jobs: int = spec(0, kind=int, check=at_least(0),
                     help="runs at once on this machine, each in its own process (0 = auto: on a CPU, cores // "
                          "run.threads (1 thread a run when unset); on CUDA, 4 a GPU); not part of a run's identity")
    precision: str = spec("fp32", kind=str, check=one_of("fp32", "bf16", "fp16"),
                          help="training/evaluation autocast: fp32, bf16 or fp16 (fp16 scales the loss); "
                               "part of a run's identity when not fp32")
    channels_last: bool = spec(False, kind=bool, help="channels-last memory format for conv nets "
                                                      "(part of a run's identity when set)")
    compile: str = spec("auto", kind=str, check=one_of("auto", "on", "off"),
                        help="torch.compile the training step: auto = on a CPU for the nets it pays for (instance "
                             "norm / avg-pool conv nets: the ConvNet family) with enough steps; warm-up time is "
                             "recorded apart; part of a run's identity when not auto")
    log: list = spec(default_factory=list, kind=list, check=names_from(LOG_SINKS, "sink"),
                     help="also log each run's metrics to: tensorboard (<run>/tensorboard), wandb (offline unless "
                          "WANDB_MODE says otherwise; <run>/wandb); not part of a run's identity")
    # Where runs execute (none of these is part of a run's identity).
    executor: str = spec("local", kind=str, check=one_of("local", "ray"),
                         help="local (this machine, one run after another) or ray (one Ray task per run)")
    ray_address: str = spec("", kind=str, help="the Ray cluster ('' = $RAY_ADDRESS, else a local Ray instance)")
    gpus_per_run: float = spec(0.0, kind=float, check=at_least(0),
                               help="GPUs each run holds on Ray (fractional packs runs, e.g. 0.25); > 0 = runs on cuda")
    cpus_per_run: float = spec(1.0, kind=float, check=lambda x: None if x > 0 else "must be > 0",
                               help="CPUs each run holds on Ray (torch threads, unless run.threads is set)")
    ray_retries: int = spec(3, kind=int, check=at_least(0),
                            help="times a run lost with its Ray node or worker is started again (it resumes)")
    ray_shared_store: bool = spec(False, kind=bool,
                                  help="the run store is on a filesystem every Ray node mounts at the same path: "
                                       "workers write into it directly")


@dataclass(frozen=True)
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    run: RunConfig = field(default_factory=RunConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)


# Sections whose unknown keys are collected into an ``options``/``params`` dict instead of rejected.
_OPEN_SECTIONS = {"model": "options"}


def _type_name(kind: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            list: "a list", dict: "a table"}.get(kind, str(kind))


def _coerce(value: Any, kind: type) -> Any:
    """Return ``value`` as ``kind`` or raise TypeError. Ints are accepted where floats are."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise TypeError
    if kind is int and isinstance(value, bool):
        raise TypeError
    if not isinstance(value, kind):
        raise TypeError
    return value


def _build(cls: type, raw: dict, where: str, section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    extra_key = _OPEN_SECTIONS.get(section)
    extras: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{section}.{key}"
        if key not in known or (extra_key and key == extra_key):
            if extra_key:
                extras[key] = value
                continue
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{section}.{near[0]}'?)" if near else ""
            raise ConfigError(f"{where}: unknown key '{dotted}'{hint}; allowed: {', '.join(sorted(known))}")
        f = known[key]
        kind, check = f.metadata["kind"], f.metadata["check"]
        try:
            value = _coerce(value, kind)
        except TypeError:
            raise ConfigError(f"{where}: '{dotted}' = {value!r} must be {_type_name(kind)}") from None
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{where}: '{dotted}' = {value!r} {problem}")
        kwargs[key] = value
    if extra_key:
        kwargs[extra_key] = {**kwargs.get(extra_key, {}), **extras}
    return cls(**kwargs)


def config_from_dict(raw: dict, where: str = "config") -> Config:
    """Validate a nested dict (TOML layout) into a :class:`Config`."""
    sections = {f.name: f for f in fields(Config)}
    built: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in sections:
            near = difflib.get_close_matches(name, sections, n=1)
            hint = f" (did you mean '[{near[0]}]'?)" if near else ""
            raise ConfigError(f"{where}: unknown section '[{name}]'{hint}; allowed: {', '.join(sections)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{name}' must be a table ([{name}])")
        built[name] = _build(type(sections[name].default_factory()), value, where, name)  # type: ignore[misc]
    cfg = Config(**built)
    _check_cross(cfg, where)
    return cfg


def _check_cross(cfg: Config, where: str) -> None:
    from .models import model_options

    try:
        allowed = model_options(cfg.model.name)
    except ConfigError as err:
        raise ConfigError(f"{where}: 'model.name': {err}") from None
    for key in cfg.model.options:
        if key not in allowed:
            opts = ", ".join(sorted(allowed)) or "none"
            raise ConfigError(f"{where}: unknown key 'model.{key}' for model '{cfg.model.name}'; allowed: {opts}")
    if cfg.data.dataset in ("imagefolder", "npz") and not cfg.data.path:
        raise ConfigError(f"{where}: 'data.path' must name the {cfg.data.dataset} location for dataset '{cfg.data.dataset}'")
    synthetic_variants(cfg, where)
    if any(m >= 10**6 for m in cfg.train.milestones):
        raise ConfigError(f"{where}: 'train.milestones' are epochs and look too large")
    for key in ("instability_rounds", "histogram_rounds", "hessian_rounds", "landscape_rounds"):
        late = [r for r in getattr(cfg.analysis, key) if r > cfg.prune.rounds]
        if late:
            raise ConfigError(f"{where}: 'analysis.{key}' has round {late[0]} but prune.rounds = {cfg.prune.rounds}")
    if cfg.analysis.instability_rewinds and cfg.prune.rewind_unit == "epoch":
        late = [k for k in cfg.analysis.instability_rewinds if k >= cfg.train.epochs]
        if late:
            raise ConfigError(f"{where}: 'analysis.instability_rewinds' has {late[0]} epochs "
                              f"but train.epochs = {cfg.train.epochs}")


@dataclass(frozen=True)
class SyntheticVariant:
    """One synthetic source of an experiment: its label in tables and its resolved settings."""

    label: str
    config: SyntheticConfig


def _variant_label(sc: SyntheticConfig) -> str:
    if sc.path:
        return sc.path.rstrip("/").rsplit("/", 1)[-1] or sc.path
    return f"{sc.method} ipc{sc.ipc}"


def synthetic_variants(cfg: Config, where: str = "config") -> list[SyntheticVariant]:
    """The distilled method's sources: ``[synthetic]`` itself, or one per ``synthetic.variants`` table.

    A variant inherits every ``[synthetic]`` setting except ``params`` and ``path``, which describe
    the source (each distiller has its own hyperparameters)."""
    sc = cfg.synthetic
    if not sc.variants:
        return [SyntheticVariant("", sc)]
    base = {k: v for k, v in to_dict(sc).items() if k not in ("variants", "params", "path")}
    out: list[SyntheticVariant] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(sc.variants):
        section = f"synthetic.variants[{i}]"
        raw = dict(raw)
        name = raw.pop("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: '{section}.name' = {name!r} must be a string")
        if "variants" in raw:
            raise ConfigError(f"{where}: '{section}.variants': a variant cannot have variants")
        vc = _build(SyntheticConfig, {**base, **raw}, where, section)
        label = name or _variant_label(vc)
        key = repr(sorted(to_dict(vc).items()))
        if key in seen:
            raise ConfigError(f"{where}: '{section}' has the same source and settings as "
                              f"synthetic.variants[{seen[key]}]; remove one of them")
        if label in {v.label for v in out}:
            raise ConfigError(f"{where}: '{section}' would be labelled '{label}' like an earlier variant; "
                              "give it a name (name = \"...\")")
        seen[key] = i
        out.append(SyntheticVariant(label, vc))
    return out


def to_dict(obj: Any) -> Any:
    """A config (or part) as plain nested dicts/lists, the inverse of :func:`config_from_dict`."""
    if is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in fields(obj)}
        if isinstance(obj, ModelConfig):
            out = {"name": obj.name, **obj.options}
        return out
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def describe_keys() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type, default, help) for every setting: used by --help and the Launch form."""
    rows = []
    for section in fields(Config):
        for f in fields(section.default_factory()):  # type: ignore[misc]
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            rows.append((f"{section.name}.{f.name}", _type_name(f.metadata["kind"]), default, f.metadata["help"]))
    return rows

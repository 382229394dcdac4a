"""TOML presets: found by name or path, merged with ``--set key=value`` overrides, validated."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import tomli_w

from .config import Config, config_from_dict, to_dict
from .errors import ConfigError

DEFAULT_PROFILE = "quickstart"


def profile_dirs() -> list[Path]:
    """Where named profiles live: ./profiles, the installed package's copy, the source tree's."""
    dirs = [Path.cwd() / "profiles"]
    try:
        dirs.append(Path(str(resources.files("dptui") / "profiles")))
    except ModuleNotFoundError:
        pass
    dirs.append(Path(__file__).resolve().parent.parent / "profiles")
    seen, out = set(), []
    for d in dirs:
        if d.is_dir() and d.resolve() not in seen:
            seen.add(d.resolve())
            out.append(d)
    return out


def list_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in reversed(profile_dirs()):  # earlier dirs win
        for p in sorted(d.glob("*.toml")):
            found[p.stem] = p
    return dict(sorted(found.items()))


def find_profile(name_or_path: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"profile file '{path}' does not exist; pass a .toml path or one of: {', '.join(list_profiles())}")
        return path
    found = list_profiles()
    if name_or_path not in found:
        raise ConfigError(f"no profile named '{name_or_path}'; available: {', '.join(found) or 'none'} "
                          "(or pass a path to a .toml file)")
    return found[name_or_path]


def read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err}); fix the syntax") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5). Values are TOML literals; bare words are strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or "." not in key:
        raise ConfigError(f"--set {text!r}: expected SECTION.KEY=VALUE, e.g. --set train.epochs=5")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for text in overrides:
        parts, value = parse_override(text)
        node = merged
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: '{part}' is not a table")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = value
    return merged


def load_profile(name_or_path: str = DEFAULT_PROFILE, overrides: list[str] | None = None) -> tuple[Config, Path]:
    path = find_profile(name_or_path)
    raw = read_toml(path)
    where = str(path) if not overrides else f"{path} (with --set {' '.join(overrides)})"
    cfg = config_from_dict(apply_overrides(raw, overrides or []), where=where)
    if "experiment" not in raw or "name" not in raw.get("experiment", {}):
        from dataclasses import replace
        cfg = replace(cfg, experiment=replace(cfg.experiment, name=path.stem))
    return cfg, path


def dumps(cfg: Config) -> str:
    return tomli_w.dumps(to_dict(cfg))


def save_profile(cfg: Config, path: Path) -> None:
    from .store import atomic_write_text

    atomic_write_text(path, dumps(cfg))

"""The experiment's synthetic sets, made (or loaded) once per source and shared by its runs."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..claims import Claim, claim_path
from ..config import Config, SyntheticConfig
from ..data.dataset import Dataset
from ..errors import DPError
from ..synthetic.provider import cache_entry, source_key, source_label, synthetic_cache_dir, synthetic_set
from ..training import Stopped

StopFlag = Callable[[], bool]


class SourceFailed(RuntimeError):
    """A synthetic source that failed for an earlier run of the experiment (not tried again)."""


class SyntheticSources:
    """The experiment's synthetic sets: made (or loaded) once per source and shared by every run and seed
    that uses it. A source that fails (a distiller that diverges, a stop) fails each run that uses it with
    the same line, without being tried again; runs of other sources are not affected."""

    def __init__(self, cfg: Config, runs_dir: Path, data_root: str | Path | None, dataset: Dataset,
                 files: dict | None = None):
        self.cfg, self.runs_dir, self.data_root, self.dataset = cfg, runs_dir, data_root, dataset
        self.made = dict(files or {})  # source_key -> SyntheticSet
        self.failed: dict[str, str] = {}

    def get(self, sc: SyntheticConfig, progress=None, should_stop: StopFlag | None = None, on_wait=None):
        """The set of source ``sc``. A distilled one is made under a claim on its cache entry, so two processes
        on one store distil it once: the second waits (``on_wait(holder)`` is told who has it), then loads it."""
        key = source_key(sc)
        if key in self.failed:
            raise SourceFailed(f"{self.failed[key]} (failed for an earlier run; not tried again)")
        if key not in self.made:
            try:
                entry = cache_entry(sc, self.dataset, self.cfg.model)
                claim = Claim(claim_path(self.runs_dir, "synthetic", entry), on_wait) if entry else None
                if claim is not None:
                    claim.acquire()
                try:
                    self.made[key] = synthetic_set(sc, self.dataset, self.dataset.device, model=self.cfg.model,
                                                   cache_dir=synthetic_cache_dir(self.runs_dir),
                                                   data_root=self.data_root or self.cfg.data.root,
                                                   progress=progress, should_stop=should_stop)
                finally:
                    if claim is not None:
                        claim.release()
            except Stopped:
                raise
            except Exception as err:
                self.failed[key] = f"synthetic source '{source_label(sc)}': {error_line(err)}"
                raise SourceFailed(self.failed[key]) from err
        return self.made[key]


def error_line(err: BaseException) -> str:
    """A failed run's one-line error: the message of input errors, else the exception's type and message."""
    return str(err) if isinstance(err, (DPError, SourceFailed)) else f"{type(err).__name__}: {err}"

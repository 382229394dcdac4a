"""TensorBoard sink: a run's metrics as event files under ``<run dir>/tensorboard/`` (``[run] log``).

Per round (step = round): ``sparsity``, ``val_acc``, ``inner_test_acc``, ``time_to_mask_s``,
``time_to_mask_validated_s``, ``inner_train_s`` (each when not None). Per epoch of the dense, inner and validate
trainings: ``loss/<stage>``, its step the epochs trained in that stage so far (:func:`~dpcore.sinks.epoch_step`).
``dense/test_acc`` at step 0; the analyses' numeric results (``instability/rewind_<k>/barrier``, ...) at their
round. When the run ends (or the sink closes), the resolved config as hparams (``section.key``, plus the run's
method, seed and variant) with ``hparams/best_val_acc`` and ``hparams/final_sparsity``. Needs ``tensorboard``.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

from ..config import Config, to_dict
from ..events import AnalysisDone, DenseDone, EpochProgress, Event, RoundDone, RunDone, RunFailed
from . import LOSS_STAGES, LogSink, analysis_metrics, epoch_step, final_metrics, flat_config, number, round_metrics


class TensorBoardSink(LogSink):
    name = "tensorboard"

    def __init__(self, cfg: Config, run_dir: Path, run_id: str, meta: dict):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "tensorboard"
        self.hparams = {**flat_config(to_dict(cfg)),
                        **{f"run.{k}": meta[k] for k in ("method", "seed", "variant") if k in meta},
                        "run.run_id": run_id}
        self.writer: SummaryWriter | None = None  # opened at the first event
        self.rows: list[dict] = []
        self.hparams_written = False

    def open(self) -> SummaryWriter:
        if self.writer is None:
            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        return self.writer

    def handle(self, event: Event) -> None:
        if isinstance(event, EpochProgress):
            if event.stage in LOSS_STAGES and (loss := number(event.loss)) is not None:
                self.open().add_scalar(f"loss/{event.stage}", loss, epoch_step(event.round, event.epoch, event.epochs))
        elif isinstance(event, RoundDone):
            w = self.open()
            r = int(event.row["round"])
            for key, value in round_metrics(event.row).items():
                w.add_scalar(key, value, r)
            self.rows.append(event.row)
            w.flush()
        elif isinstance(event, DenseDone):
            if (acc := number(event.test_acc)) is not None:
                self.open().add_scalar("dense/test_acc", acc, 0)
        elif isinstance(event, AnalysisDone):
            for key, value in analysis_metrics(event.analysis, event.result).items():
                self.open().add_scalar(key, value, event.round)
        elif isinstance(event, (RunDone, RunFailed)):
            self.write_hparams()
            self.open().flush()
        else:
            self.open()  # RunStarted etc.: the writer exists from the run's start

    def write_hparams(self) -> None:
        if self.hparams_written or self.writer is None:
            return
        self.hparams_written = True
        metrics = {f"hparams/{k}": v for k, v in final_metrics(self.run_dir, self.rows).items()}
        step = int(self.rows[-1]["round"]) if self.rows else 0
        # run_name ".": the hparams go into this run's own folder (not a timestamped sub-run), next to its scalars
        self.writer.add_hparams(self.hparams, metrics, run_name=".", global_step=step)

    def finish(self) -> None:
        if self.writer is None:
            return
        try:
            self.write_hparams()
        finally:
            self.writer.close()

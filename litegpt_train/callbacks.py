"""Offline training logs: a CSV of loss / learning rate / grad norm per logging step (TensorBoard is optional)."""

from __future__ import annotations

import csv
from pathlib import Path

from transformers import TrainerCallback

CSV_COLUMNS = ("step", "epoch", "loss", "learning_rate", "grad_norm", "mean_token_accuracy", "eval_loss")


class CSVLoggerCallback(TrainerCallback):
    """Append every training/eval log to `<output_dir>/training_log.csv` (main process only).

    A resumed run appends to the same file; rows are keyed by `step`, so a reader can drop the duplicated
    steps between the checkpoint and the kill.
    """

    def __init__(self, filename: str = "training_log.csv"):
        self.filename = filename

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        row = {"step": state.global_step, "epoch": state.epoch, **logs}
        if not any(row.get(column) is not None for column in CSV_COLUMNS[2:]):
            return  # end-of-training summaries (runtime, throughput) are not step logs
        path = Path(args.output_dir) / self.filename
        path.parent.mkdir(parents=True, exist_ok=True)
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({column: row.get(column, "") for column in CSV_COLUMNS})


__all__ = ["CSV_COLUMNS", "CSVLoggerCallback"]

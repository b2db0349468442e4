"""What a training run shows while it trains: one progress bar, not a stream of log dictionaries.

`TrainingProgress` is a ``transformers.TrainerCallback`` that draws one rich progress bar per run
(steps, elapsed time, time left, and the latest loss; for BaRA also the effective rank s̄ and the
KL), on the main process only. The raw log dictionaries go to ``train_log.json``; with
``verbose`` they are printed too, one per logging step, above the bar.

`StatusReporter` is the same callback for a run in a child process: instead of drawing, it hands
the same status to a function (e.g. ``queue.put``), so the parent can draw one line per process.

Both replace transformers' own tqdm bar and its printing of the logs: a pipeline removes
``ProgressCallback`` and ``PrinterCallback`` from the trainer (`quiet_trainer`) and adds one of these.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

__all__ = ["TrainingProgress", "StatusReporter", "quiet_trainer", "progress_columns", "describe", "format_logs"]


def quiet_trainer(trainer: Any) -> None:
    """Remove transformers' tqdm bar and its printing of the raw log dictionaries from ``trainer``."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    try:
        from transformers.utils.notebook import NotebookProgressCallback
    except ImportError:  # pragma: no cover - older or trimmed transformers
        return
    trainer.remove_callback(NotebookProgressCallback)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def describe(logs: dict[str, Any], max_rank: int | None = None) -> str:
    """The status text of one log: ``loss 0.693 · s̄ 3.21/8 · KL 0.452`` (what a method logs, in that order).

    Example:
        >>> describe({"loss": 0.69314, "joint_effective_rank": 3.2137, "kl_global": 0.3, "kl_local": 0.152}, 8)
        'loss 0.693 · s̄ 3.21/8 · KL 0.452'
        >>> describe({"loss": 1.25})
        'loss 1.250'
    """
    parts = []
    loss = _number(logs.get("loss"))
    if loss is not None:
        parts.append(f"loss {loss:.3f}")
    rank = _number(logs.get("joint_effective_rank"))
    if rank is not None:
        parts.append(f"s̄ {rank:.2f}" + (f"/{max_rank}" if max_rank else ""))
    kl = [_number(logs.get(key)) for key in ("kl_global", "kl_local")]
    kl = [v for v in kl if v is not None]
    if kl:
        parts.append(f"KL {sum(kl):.3g}")
    return " · ".join(parts)


def format_logs(logs: dict[str, Any], step: int | None = None) -> str:
    """One log dictionary as printed with ``--verbose``: floats to 4 significant digits, the step last
    (as in ``train_log.json``'s ``history``).

    Example:
        >>> format_logs({"loss": 0.693147, "epoch": 0.5}, step=2)
        "{'loss': 0.6931, 'epoch': 0.5, 'step': 2}"
    """
    shown = {k: v for k, v in logs.items() if k != "total_flos"}
    if step is not None:
        shown["step"] = step
    cells = [f"{k!r}: {format(v, '.4g') if isinstance(v, float) else repr(v)}" for k, v in shown.items()]
    return "{" + ", ".join(cells) + "}"


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-:--:--"
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_columns() -> tuple:
    """The columns of a training line: ``name ━━━━━━ 40/320 eta 0:01:10 loss 0.693 · s̄ 3.21/8 · KL 0.452``
    (``took 0:02:13`` once finished). Draw them with ``Progress(*progress_columns(), expand=True)``: the bar
    takes the width the text leaves."""
    from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn
    from rich.text import Text

    class TimeColumn(ProgressColumn):
        def render(self, task) -> Text:
            if task.finished:
                return Text(f"took {_clock(task.finished_time)}")
            return Text(f"eta {_clock(task.time_remaining)}")

    return (TextColumn("{task.description}"), BarColumn(bar_width=None), MofNCompleteColumn(), TimeColumn(),
            TextColumn("{task.fields[status]}"))


def _max_rank(model: Any) -> int | None:
    """r of a BaRA model (its ``bara_config``; also under a DDP wrapper), else None."""
    config = getattr(model, "bara_config", None) or getattr(getattr(model, "module", None), "bara_config", None)
    r = getattr(config, "r", None)
    return r if isinstance(r, int) else None


class _Tracker(TrainerCallback):
    """Keeps the run's status (step, total, latest log) and calls `changed` when it moves."""

    def __init__(self) -> None:
        self.step, self.total, self.status, self.max_rank = 0, 0, "", None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.step, self.total, self.status = state.global_step, state.max_steps, ""
        self.max_rank = _max_rank(model)
        self.started(state.is_world_process_zero)

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        self.changed(state.is_world_process_zero)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        text = describe(logs, self.max_rank)
        if text:
            self.status = text
        self.logged(logs, state)
        self.changed(state.is_world_process_zero, force=True)

    def on_train_end(self, args, state, control, **kwargs):
        self.step = state.global_step
        self.changed(state.is_world_process_zero, force=True)
        self.close()

    # -- what a subclass does with it ---------------------------------------------------------
    def started(self, main: bool) -> None:
        """Training begins (after a resume: at the checkpoint's step)."""

    def changed(self, main: bool, force: bool = False) -> None:
        """The step or the status moved."""

    def logged(self, logs: dict[str, Any], state: Any) -> None:
        """A log dictionary was written (every ``logging_steps``)."""

    def note(self, text: str) -> None:
        """A one-line message about the run (e.g. that no checkpoint was found)."""

    def close(self) -> None:
        """Training ended (or failed): release the display. Called again is harmless."""


class TrainingProgress(_Tracker):
    """One rich progress bar for one run, on the main process; ``verbose`` prints every log dictionary.

    Args:
        label: the run's name at the left of the bar (e.g. the method).
        show: draw the bar (False: only the ``verbose`` printing).
        verbose: print each log dictionary as it is logged (above the bar).
        console: the rich console to draw on; default the harness console (stdout).
    """

    def __init__(self, label: str, *, show: bool = True, verbose: bool = False, console: Any = None) -> None:
        super().__init__()
        self.label, self.show, self.verbose = label, show, verbose
        self._console = console
        self._progress = None
        self._task = None

    @property
    def console(self):
        if self._console is None:
            from bara.harness.console import console

            self._console = console
        return self._console

    def started(self, main: bool) -> None:
        if not (main and self.show) or self._progress is not None:
            return
        from rich.progress import Progress

        self._progress = Progress(*progress_columns(), console=self.console, refresh_per_second=4, expand=True)
        self._task = self._progress.add_task(self.label, total=max(self.total, 1), completed=self.step,
                                             status="starting")
        self._progress.start()

    def changed(self, main: bool, force: bool = False) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=self.step, status=self.status)

    def logged(self, logs: dict[str, Any], state: Any) -> None:
        if self.verbose and state.is_world_process_zero:
            self.console.print(format_logs(logs, state.global_step), markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StatusReporter(_Tracker):
    """Hands the run's status to ``send`` as a dict (``step``, ``total``, ``status`` and ``key``), at most
    every ``interval`` seconds plus at every log and at the end: for a run in a child process whose
    parent draws the line (``send=queue.put``)."""

    def __init__(self, send: Callable[[dict[str, Any]], None], key: str, *, interval: float = 0.25) -> None:
        super().__init__()
        self.send, self.key, self.interval = send, key, interval
        self._last = -math.inf

    def started(self, main: bool) -> None:
        self.changed(main, force=True)

    def changed(self, main: bool, force: bool = False) -> None:
        now = time.monotonic()
        if not main or (not force and now - self._last < self.interval):
            return
        self._last = now
        self.send({"key": self.key, "step": self.step, "total": self.total, "status": self.status})

    def note(self, text: str) -> None:
        self.send({"key": self.key, "note": text})

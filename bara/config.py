"""`BaRAConfig`: every setting of a BaRA adapter, validated on construction.

Every invalid value raises a one-line `ValueError` naming the field, the value and what is allowed.
The defaults are the method's; docs/configuration.md says when to change each field.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRIORS = ("beta", "ibp")
LOCAL_PRIORS = ("fixed", "global")

# options that earlier versions had, with the one behaviour this version keeps: a saved adapter that
# used that value loads; one trained with another value is refused with a message that says so
RETIRED_OPTIONS: dict[str, Any] = {
    "gate_input": "x", "variant": "product", "relaxation": "concrete", "local_kl": "instance",
    "local_mi_weight": 0.0, "center_gate_input": False, "global_draw": "example", "local_noise": "example",
    "mean_preserving": False, "slab_std_init": None, "slab_prior_std": 0.2,
}


def dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error naming the known fields.

    Example:
        >>> dataclass_from_dict(BaRAConfig, {"r": 4}).r
        4
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**data)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"BaRAConfig.{name}={value!r} is invalid: {allowed}")


@dataclass
class BaRAConfig:
    """Configuration of a BaRA adapter.

    Args:
        r: maximum rank, the number of rank-1 factors per adapted layer.
        lora_alpha: LoRA scale numerator; the update is scaled by ``lora_alpha / r``.
            ``None`` means ``2 * r``.
        target_modules: names of the ``nn.Linear`` layers to adapt: a list of name
            suffixes (``["query", "value"]``) or one regular expression matched against the
            full module name (``r".*\\.(q|v)_proj$"``), as in peft. ``None``: the attention
            query and value projections.
        alpha0: the global prior: ``π_k ~ Beta(alpha0, 1)`` (prior mean ``alpha0 / (1 + alpha0)``);
            with ``prior="ibp"`` each stick ``ν_j ~ Beta(alpha0, 1)``, so about ``alpha0`` factors are
            expected in use.
        prior: ``"beta"`` (independent, exchangeable π_k) or ``"ibp"`` (stick-breaking:
            ``π_k = Π_{j≤k} ν_j``, so later factors are used less and die first).
        rho0: the local prior ``l_nk ~ Bernoulli(rho0)`` when ``local_prior="fixed"``.
        local_prior: ``"fixed"``: each input's local gate pays its KL against ``Bernoulli(rho0)``;
            ``"global"``: against the layer's learned usage ``Bernoulli(π_k)`` (in expectation over
            q(π)), so an input pays only for deviating from how its layer uses factor k, and the
            global gate learns from how often inputs use each factor.
        temperature: τ of the binary-Concrete relaxation used while training.
        beta_global, beta_local: weights β_g, β_l of the global and local KL terms. β_l weighs
            the local KL against an instance's whole likelihood.
        kl_warmup: fraction of training steps over which β_t rises linearly 0 → 1.
        lora_dropout: dropout probability on the adapter's input while training, as peft's
            ``LoraConfig.lora_dropout`` (the gates still pool the undropped input).
        context_dependent: ``True`` learns the local gates' input weights ``W_g``. ``False``
            freezes ``W_g`` at 0, so each factor's local gate is a learned constant ``σ(b_g)``,
            the same for every input: the control that tells whether the input dependence helps.
        kuma_a_init, kuma_b_init: initial Kumaraswamy parameters of the global gate. ``kuma_a_init=None``
            starts the posterior at the prior (``a = alpha0``, ``b = 1``); 9, 1 gives E π = 0.9.
        local_bias_init: initial local-gate bias b_g (+3 gives σ ≈ 0.95).
        prune_threshold: factors with E π below this are dropped when saving.
        modules_to_save: extra modules (e.g. a new classifier head) trained fully and saved.
        rank_pattern: per-layer rank after pruning (written by `save_pretrained`).

    Example:
        >>> cfg = BaRAConfig(r=8, target_modules=["query", "value"])
        >>> cfg.scaling
        2.0
        >>> BaRAConfig(rho0=1.5)
        Traceback (most recent call last):
        ...
        ValueError: BaRAConfig.rho0=1.5 is invalid: must lie strictly between 0 and 1
    """

    r: int = 8
    lora_alpha: float | None = None
    target_modules: list[str] | str | None = None
    alpha0: float = 1.0 / 3.0
    prior: str = "beta"
    rho0: float = 0.5
    local_prior: str = "fixed"
    temperature: float = 1.0
    beta_global: float = 1.0
    beta_local: float = 0.1
    kl_warmup: float = 0.1
    lora_dropout: float = 0.0
    context_dependent: bool = True
    kuma_a_init: float | None = 9.0
    kuma_b_init: float = 1.0
    local_bias_init: float = 3.0
    prune_threshold: float = 0.05
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.lora_alpha is None:
            self.lora_alpha = 2.0 * self.r if isinstance(self.r, int) else None
        self.validate()

    @property
    def scaling(self) -> float:
        """LoRA scale ``c = lora_alpha / r`` (fixed by the configured r, even after pruning)."""
        return float(self.lora_alpha) / self.r

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            _fail("r", self.r, "must be a positive integer")
        _positive_finite("lora_alpha", self.lora_alpha)
        if self.target_modules is not None:
            tm = self.target_modules
            ok = isinstance(tm, str) and tm != "" or (
                isinstance(tm, (list, tuple)) and len(tm) > 0 and all(isinstance(t, str) and t for t in tm)
            )
            if not ok:
                _fail("target_modules", tm, "must be a non-empty list of module-name suffixes or a regex string")
            if isinstance(tm, tuple):
                self.target_modules = list(tm)
        _positive_finite("alpha0", self.alpha0)
        if not (isinstance(self.rho0, (int, float)) and 0.0 < self.rho0 < 1.0):
            _fail("rho0", self.rho0, "must lie strictly between 0 and 1")
        _positive_finite("temperature", self.temperature)
        for name in ("beta_global", "beta_local"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                _fail(name, value, "must be a finite number >= 0")
        if not (isinstance(self.kl_warmup, (int, float)) and 0.0 <= self.kl_warmup <= 1.0):
            _fail("kl_warmup", self.kl_warmup, "must be a fraction of training in [0, 1]")
        for name, allowed in (("prior", PRIORS), ("local_prior", LOCAL_PRIORS)):
            if getattr(self, name) not in allowed:
                _fail(name, getattr(self, name), f"allowed values are {', '.join(map(repr, allowed))}")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            _fail("lora_dropout", self.lora_dropout, "must be a probability in [0, 1)")
        if not isinstance(self.context_dependent, bool):
            _fail("context_dependent", self.context_dependent, "must be true or false")
        if self.kuma_a_init is not None:
            _positive_finite("kuma_a_init", self.kuma_a_init)
        _positive_finite("kuma_b_init", self.kuma_b_init)
        if not (isinstance(self.local_bias_init, (int, float)) and math.isfinite(self.local_bias_init)):
            _fail("local_bias_init", self.local_bias_init, "must be a finite number")
        if not (isinstance(self.prune_threshold, (int, float)) and 0.0 <= self.prune_threshold < 1.0):
            _fail("prune_threshold", self.prune_threshold, "must lie in [0, 1)")
        if self.modules_to_save is not None and not (
            isinstance(self.modules_to_save, (list, tuple)) and all(isinstance(m, str) and m for m in self.modules_to_save)
        ):
            _fail("modules_to_save", self.modules_to_save, "must be a list of module names")
        for layer, rank in self.rank_pattern.items():
            if not (isinstance(rank, int) and 0 <= rank <= self.r):
                _fail("rank_pattern", {layer: rank}, f"per-layer ranks must be integers in [0, r={self.r}]")

    # -- serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaRAConfig":
        """Build from a dict of fields; an unknown field is an error that names the known ones."""
        return dataclass_from_dict(cls, data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "BaRAConfig":
        """The config of a saved adapter. Options that earlier versions had are accepted at the value
        this version keeps and refused, with a message naming them, at any other.

        Example:
            >>> BaRAConfig.from_saved({"r": 4, "global_draw": "example"}).r
            4
            >>> BaRAConfig.from_saved({"r": 4, "variant": "additive"})
            Traceback (most recent call last):
            ...
            ValueError: the adapter was trained with variant='additive', which this version of bara no longer supports (only 'product')
        """
        data = dict(data)
        for name, kept in RETIRED_OPTIONS.items():
            if name in data:
                value = data.pop(name)
                if value != kept:
                    raise ValueError(f"the adapter was trained with {name}={value!r}, which this version of bara "
                                     f"no longer supports (only {kept!r})")
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        """Write the config as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "BaRAConfig":
        """Read a saved config (see `from_saved`); a one-line error names a broken file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of BaRAConfig fields")
        return cls.from_saved(data)


def _positive_finite(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        _fail(name, value, "must be a finite number > 0")

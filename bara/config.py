"""`BaRAConfig`: every knob of a BaRA adapter, validated on construction.

Defaults follow DESIGN §2 ("Defaults" table). Every invalid value raises a one-line
`ValueError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GATE_INPUTS = ("x", "Ax")
VARIANTS = ("product", "additive")
PRIORS = ("beta", "ibp")
RELAXATIONS = ("concrete", "straight_through")
LOCAL_KLS = ("instance", "marginal", "ceiling")
GLOBAL_DRAWS = ("example", "row")
LOCAL_NOISES = ("row", "example")


def dataclass_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys are an error naming the known fields."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(known)}")
    return cls(**data)


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"BaRAConfig.{name}={value!r} is invalid: {allowed}")


@dataclass
class BaRAConfig:
    """Configuration of a BaRA adapter (DESIGN §2).

    Args:
        r: maximum rank, the number of rank-1 factors ("topics") per adapted layer.
        lora_alpha: LoRA scale numerator; the update is scaled by ``lora_alpha / r``.
            ``None`` means ``2 * r``.
        target_modules: names of the ``nn.Linear`` layers to adapt: a list of name
            suffixes (``["query", "value"]``) or one regular expression matched against the
            full module name (``r".*\\.(q|v)_proj$"``), as in peft.
        alpha0: global prior ``π_k ~ Beta(alpha0, 1)`` (prior mean ``alpha0 / (1 + alpha0)``).
        rho0: local prior ``l_nk ~ Bernoulli(rho0)``.
        temperature: τ of the binary-Concrete relaxation used while training.
        beta_global, beta_local: weights β_g, β_l of the global and local KL terms. β_l
            weighs the local KL against an instance's whole likelihood: with many labels per
            instance (tokens), DESIGN's 0.1 lets the gates invent input dependence where one map
            suffices, and ``beta_local=1`` (the untempered ELBO) prevents it; with one label per
            instance, 1 switches the input dependence off (`benchmarks/results/c7-synthetic.md`).
        kl_warmup: fraction of training steps over which β_t rises linearly 0 → 1.
        gate_input: ``"x"`` pools the layer input (default); ``"Ax"`` pools ``A x``.
        variant: ``"product"`` (z = g·l, default) or ``"additive"`` (one gate with
            probability σ(logit π + ℓ(x)), the focused-topic-model form).
        prior: ``"beta"`` (independent π_k) or ``"ibp"`` (stick-breaking, ordered factors).
        relaxation: ``"concrete"`` (relaxed Bernoulli) or ``"straight_through"`` (hard gates
            forward, relaxed gradients backward) for the training forward.
        local_kl: ``"instance"`` (the ELBO's ``mean_n KL(q(l|x_n) ‖ Bern(ρ0))``, default) or
            ``"marginal"``: ``KL(mean_n q(l|x_n) ‖ Bern(ρ0))`` over the batch. The instance KL
            equals the marginal KL plus the mutual information between input and gates, so it
            taxes exactly the context dependence BaRA is after; the marginal form keeps the
            sparsity pressure and drops that tax (no longer an ELBO; a research option).
            ``"ceiling"``: the marginal KL plus each instance's KL to the nearest prior in the
            family ``{Bern(ρ) : ρ ≤ ρ0}``, i.e. ``KL(q(l|x_n) ‖ Bern(ρ0))`` where ``q > ρ0``
            and 0 below: an input may switch factors off without a mutual-information tax, but
            keeping one above ρ0 costs what the ELBO charges (a research option against a
            well-fitted domain taking every factor while another pays for it in the marginal
            KL). The marginal term is what keeps the gates alive: with the hinge alone every
            gate of the SST-2+BoolQ mixture switched off within a third of an epoch.
        local_mi_weight: with ``local_kl="marginal"``, how much of the tax to keep: the local
            term becomes ``KL(q̄ ‖ Bern(ρ0)) + λ · mean_n KL(q(l|x_n) ‖ q̄)``. λ = 0 is the
            marginal KL, λ = 1 the instance KL (the ELBO) exactly; in between, the gates may
            depend on the input at a discount while each input's gate keeps some entropy.
        lora_dropout: dropout probability on the adapter's input while training, as peft's
            ``LoraConfig.lora_dropout`` (with ``gate_input="x"`` the gates still pool the undropped input). 0 (default)
            is DESIGN §2; 0.1 trains the same adapter regulariser as the ``mcdropout``
            baseline, so check C7 can ask whether the gates add anything on top of it.
        context_dependent: ``True`` (default) learns the local gates' input weights ``W_g``.
            ``False`` freezes ``W_g`` at 0, so each factor's local gate is a learned constant
            ``σ(b_g)``, the same for every input: the model keeps its whole objective, warm-up and
            gate learning rate and loses only the dependence on the input. It is check C7's
            control *trained as such*: swapping constant gates into an adapter trained with
            input-dependent gates (gate mode ``constant``) also removes what the factors
            co-adapted to, so it can lose for a reason other than the missing context.
        center_gate_input: ``True`` subtracts a running mean (over the training batches, saved with
            the adapter) from the local gates' normalised input ``LN(x̄)``. Uncentred, the mean
            direction every input shares lets ``W_g`` act as a bias with an Adam step on each of its
            ``d`` coordinates, so a pull common to all inputs (the local KL's towards ρ0) moves it
            far faster than ``b_g``; centred, ``W_g`` sees only what differs between inputs. ``False``
            (default) is DESIGN §2. A research option for check C7.
        global_draw: on multiple-choice inputs (``[examples, choices, tokens]``, each choice read as
            its own sequence), ``"example"`` (default) draws the global gate (π and g) once per
            example and shares it across the example's choices, so one Monte-Carlo sample scores
            every choice with the same adapter, as one weight draw of BLoB does; the local gates
            stay per choice, since each choice is its own input. ``"row"`` draws per choice row
            (the behaviour before this option existed; kept to measure what it changes).
        local_noise: on multiple-choice inputs, ``"example"`` (default) draws the local gates of an
            example's choice rows from shared uniforms, ``z_ck = 1[u_k < q_ck]`` (common random
            numbers; the relaxed draw shares its logistic noise the same way). Each choice keeps
            its own context-dependent probability q_ck and the same marginal distribution, but one
            Monte-Carlo sample no longer scores the choices with independently dropped factors:
            where their probabilities agree, they keep the same factors, so the sampling noise
            does not fall on the difference between the choices' scores. The constant-gate control
            (check C7) shares its uniforms the same way. ``"row"`` draws each choice row
            independently (the default until `bara.harness.compare.EVAL_PROTOCOL` 4; the README gives
            the paired runs that decided the change).
        kuma_a_init, kuma_b_init: initial Kumaraswamy parameters (9, 1 gives E π = 0.9).
        local_bias_init: initial local-gate bias b_g (+3 gives σ ≈ 0.95).
        prune_threshold: factors with E π below this are dropped when saving (not with
            ``gate_input="Ax"``, whose gates normalise over every factor's ``A x``).
        modules_to_save: extra modules (e.g. a new classifier head) trained fully and saved.

    Example:
        >>> cfg = BaRAConfig(r=8, target_modules=["query", "value"])
        >>> cfg.scaling
        2.0
    """

    r: int = 8
    lora_alpha: float | None = None
    target_modules: list[str] | str | None = None
    alpha0: float = 1.0 / 3.0
    rho0: float = 0.5
    temperature: float = 1.0
    beta_global: float = 1.0
    beta_local: float = 0.1
    kl_warmup: float = 0.1
    gate_input: str = "x"
    variant: str = "product"
    prior: str = "beta"
    relaxation: str = "concrete"
    local_kl: str = "instance"
    local_mi_weight: float = 0.0
    lora_dropout: float = 0.0
    context_dependent: bool = True
    center_gate_input: bool = False
    global_draw: str = "example"
    local_noise: str = "example"
    kuma_a_init: float = 9.0
    kuma_b_init: float = 1.0
    local_bias_init: float = 3.0
    prune_threshold: float = 0.05
    modules_to_save: list[str] | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)  # per-layer rank after pruning

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
        for name, allowed in (
            ("gate_input", GATE_INPUTS),
            ("variant", VARIANTS),
            ("prior", PRIORS),
            ("relaxation", RELAXATIONS),
            ("local_kl", LOCAL_KLS),
            ("global_draw", GLOBAL_DRAWS),
            ("local_noise", LOCAL_NOISES),
        ):
            if getattr(self, name) not in allowed:
                _fail(name, getattr(self, name), f"allowed values are {', '.join(map(repr, allowed))}")
        if not (isinstance(self.local_mi_weight, (int, float)) and 0.0 <= self.local_mi_weight <= 1.0):
            _fail("local_mi_weight", self.local_mi_weight, "must lie in [0, 1] (0: marginal KL, 1: instance KL)")
        if self.local_mi_weight and self.local_kl != "marginal":
            _fail("local_mi_weight", self.local_mi_weight, "applies only with local_kl='marginal'")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            _fail("lora_dropout", self.lora_dropout, "must be a probability in [0, 1)")
        for name in ("context_dependent", "center_gate_input"):
            if not isinstance(getattr(self, name), bool):
                _fail(name, getattr(self, name), "must be true or false")
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
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaRAConfig":
        return dataclass_from_dict(cls, data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> "BaRAConfig":
        """The config of a saved adapter: a field it lacks was added after it was saved, so it takes
        the behaviour the adapter was trained with (its first value, `defaults_at(1)`), not today's default."""
        return cls.from_dict(defaults_at(1) | data)

    def save(self, path: str | Path) -> None:
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


# defaults that changed, keyed by the `bara.harness.compare.EVAL_PROTOCOL` that changed them, with the value they had
# before (global_draw did not exist before protocol 3: every choice row drew its own, i.e. "row")
CHANGED_DEFAULTS: dict[int, dict[str, Any]] = {3: {"global_draw": "row"}, 4: {"local_noise": "row"}}


def defaults_at(protocol: int) -> dict[str, Any]:
    """The `BaRAConfig` defaults (as a dict) under `bara.harness.compare.EVAL_PROTOCOL` ``protocol``.

    Example:
        >>> defaults_at(3)["local_noise"], defaults_at(4)["local_noise"]
        ('row', 'example')
    """
    fields = dataclasses.asdict(BaRAConfig())
    for changed_at in sorted(CHANGED_DEFAULTS, reverse=True):  # the oldest value of a field wins
        if protocol < changed_at:
            fields |= CHANGED_DEFAULTS[changed_at]
    return fields


def _positive_finite(name: str, value: Any) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        _fail(name, value, "must be a finite number > 0")

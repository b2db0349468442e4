"""A stand-in for the demo's job (train and evaluate one method), run in the processes the demo spawns.

Kept apart from the tests so that a spawned process imports only this (not torch or transformers)."""

from __future__ import annotations

import logging
import warnings


def fake_job(method: str, spec: dict, out: str, say) -> dict:
    """Report four training steps as `bara.harness.progress.StatusReporter` does, warn, log, and return."""
    if spec.get("fail") == method:
        raise ValueError(f"{method}: broken data on purpose")
    say({"key": method, "step": 0, "total": 4, "status": ""})
    warnings.warn("3 of 32 inputs were truncated")  # the same text from both processes: printed once
    logging.getLogger("bara.test").warning("a logged warning from %s", method)
    for step in range(1, 5):
        say({"key": method, "step": step, "total": 4, "status": f"loss {0.25 if method == 'lora' else 0.5:.3f}"})
    say({"key": method, "status": "evaluating"})
    return {"method": method, "out": out}

"""What sending the evaluation examples longest first saves (`bara.predict.predict(longest_first=...)`).

The collator pads every batch to its longest example. In file order a batch of 32 mixes short and long
examples; sorted longest first, each batch holds examples of similar length. For each suite task (its
evaluation set and `max_length` as in `benchmarks/suite/suite.py`, MiniLM's tokenizer) this script counts the
tokens the model is fed at batch 32 (padding included) in both orders, and on ``--time-tasks`` it times
one `mean`-mode `predict` over the first ``--examples`` evaluation examples with MiniLM-L6 + LoRA r = 8
in both orders, alternating, ``--reps`` times (the medians and the median of the paired ratios are
reported; the weights do not matter for timing). The predictions agree in both orders: the script
checks that too.

    python benchmarks/cost/eval_order.py
    python benchmarks/cost/eval_order.py --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suite"))
from common import git_commit, hardware, header, page_paths, script_command, table, write_md  # noqa: E402
from suite import TASKS  # noqa: E402  (the suite's tasks, evaluation sets and max lengths)

HERE = Path(__file__).resolve().parent  # the pages

from bara.harness.data import EncodedDataset  # noqa: E402
from bara.harness.pipeline import RunSpec, build, encode_split  # noqa: E402
from bara.predict import predict  # noqa: E402

BATCH = 32  # `predict`'s default batch size


def fed_tokens(dataset: EncodedDataset, order: list[int], batch: int = BATCH) -> int:
    """Token positions the model is fed (rows × padded width, every choice of a multiple-choice example counted)."""
    total = 0
    multiple_choice = dataset.head == "multiple_choice"  # every example padded to the widest one's choices
    for start in range(0, len(order), batch):
        items = [dataset.items[i] for i in order[start:start + batch]]
        rows = len(items) * max(item.num_choices for item in items) if multiple_choice else len(items)
        total += rows * max(item.length for item in items)
    return total


def measure_task(task: str, time_it: bool, examples: int, reps: int) -> dict:
    settings = TASKS[task]
    spec = RunSpec(model="minilm", task=task, method="lora", eval_size=settings.get("eval_size"),
                   max_length=settings["max_length"], train_size=8)
    built = build(spec)
    data = encode_split(built, "eval")
    file_order = list(range(len(data)))
    result = {"examples": len(data), "max_length": settings["max_length"],
              "file_order_tokens": fed_tokens(data, file_order),
              "longest_first_tokens": fed_tokens(data, data.longest_first()),
              "real_tokens": sum(item.length * (item.num_choices if data.head == "multiple_choice" else 1)
                                 for item in data.items)}
    if not time_it:
        return result
    subset = EncodedDataset(data.items[:examples], data.head, data.num_classes)
    model = built.method.wrap(built.head, built.target_modules, built.modules_to_save)
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for _ in range(reps + 1):  # the first round warms up and is not counted
        for longest_first in (False, True):
            start = time.perf_counter()
            outputs[longest_first] = predict(model, subset, built.collator, mode="mean", samples=1,
                                             longest_first=longest_first).probs
            times[longest_first].append(time.perf_counter() - start)
    if not torch.allclose(outputs[True], outputs[False], atol=1e-4):
        raise SystemExit(f"error: {task}: predictions differ between the two orders")
    ratios = [a / b for a, b in zip(times[False][1:], times[True][1:])]
    return result | {"timed_examples": len(subset), "file_order_s": statistics.median(times[False][1:]),
                     "longest_first_s": statistics.median(times[True][1:]), "speedup": statistics.median(ratios)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help="tasks whose padding is counted")
    parser.add_argument("--time-tasks", default="sst2,arc_easy", help="tasks whose predict time is measured")
    parser.add_argument("--examples", type=int, default=256, help="evaluation examples per timed predict call")
    parser.add_argument("--reps", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--quick", action="store_true",
                        help="sst2 only, 64 timed examples, one round (under a minute); writes eval-order_quick.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.time_tasks, args.examples, args.reps = "sst2", "sst2", 64, 1
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks + args.time_tasks.split(",") if t and t not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; allowed: {', '.join(TASKS)}")
    torch.set_num_threads(1)
    start = time.perf_counter()
    results = {}
    for task in tasks:
        print(f"[eval-order] {task}", flush=True)
        results[task] = measure_task(task, task in args.time_tasks.split(","), args.examples, args.reps)
    command = script_command(__file__, sys.argv[1:] if argv is None else argv)
    meta = {"commit": git_commit(), "hardware": hardware()}
    lines = header("Evaluation order: longest first vs file order", meta, time.perf_counter() - start, command)
    lines += [f"Tokens fed to the model at batch {BATCH} (padding included; a multiple-choice example counts every "
              "choice, padded to the batch's widest), MiniLM's tokenizer, each task's evaluation set and max length "
              "as in `benchmarks/suite/suite.py`. `real` counts the tokens without padding.", ""]
    lines += table(["task", "examples", "max length", "file order", "longest first", "real", "file order / longest first"],
                   [[t, r["examples"], r["max_length"], f"{r['file_order_tokens']:,}", f"{r['longest_first_tokens']:,}",
                     f"{r['real_tokens']:,}", f"{r['file_order_tokens'] / r['longest_first_tokens']:.2f}×"]
                    for t, r in results.items()])
    timed = {t: r for t, r in results.items() if "speedup" in r}
    if timed:
        lines += ["", f"One `mean`-mode `predict` call over the first {args.examples} evaluation examples, MiniLM-L6 + LoRA "
                  f"r = 8, one torch thread; medians of {args.reps} alternating rounds after one warm-up round; the "
                  "speedup is the median of the paired ratios. Both orders give the same predictions (checked).", ""]
        lines += table(["task", "examples", "file order s", "longest first s", "speedup"],
                       [[t, r["timed_examples"], f"{r['file_order_s']:.2f}", f"{r['longest_first_s']:.2f}",
                         f"{r['speedup']:.2f}×"] for t, r in timed.items()])
    _, page, _ = page_paths(HERE, "eval-order", args.quick)
    write_md(page, lines)
    print(f"wrote {page}")


if __name__ == "__main__":
    main()

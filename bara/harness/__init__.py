"""The evaluation harness: tasks, data, backbones, baselines, training pipeline, comparison,
metrics, plots and the command line. It builds on the method (`bara`) and is never imported by it."""

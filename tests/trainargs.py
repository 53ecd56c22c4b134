"""The command line of a short ``train.py`` run on the tiny demo sets, shared by the training tests."""

from __future__ import annotations


def train_args(data, out, steps: int, **options) -> list[str]:
    """``train.py`` arguments for ``steps`` steps over ``data`` (``demo_sets``: real and generated at weight 1,
    test as the evaluation set) into ``out``: batch 16 of 8×8 views on the CPU, a log line per step, no periodic
    evaluation, a small kNN and probe. ``options`` add or override flags (``knn_k=5`` → ``--knn-k 5``; ``None``
    gives a bare flag)."""
    settings = {
        "eval_shards": data["test"],
        "train_labels": data["real"],
        "steps": steps,
        "batch_size": 16,
        "image_size": 8,
        "log_every": 1,
        "eval_every": 0,
        "probe_epochs": 2,
        "knn_k": 5,
        "eval_batch_size": 32,
        "no_progress": None,
        "device": "cpu",
        "out": out,
        **options,
    }
    args = ["--shards", f"{data['real']}:1", "--shards", f"{data['generated']}:1"]
    for key, value in settings.items():
        args += [f"--{key.replace('_', '-')}"] + ([] if value is None else [str(value)])
    return args

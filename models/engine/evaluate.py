"""Evaluation of a run's backbone: kNN monitor and online probe at intervals, offline linear probe at the end.

The loaders of the labelled training features (``--train-labels``) and of the test sets
(``--eval-shards``) are built once, when the ``Evaluator`` is made at start-up: opening them reads and
checks every shard's index, so a damaged evaluation set stops the run before training, not after it.
"""

from __future__ import annotations

import torch

from models.evaluation import extract_features, knn_accuracy, linear_probe


class Evaluator:
    def __init__(self, plan, s, rt):
        self.s, self.rt = s, rt
        self.train_loader = plan.eval_loader(plan.train_labels, s, rt, s.knn_train_limit)
        self.test_loader = plan.eval_loader(plan.eval_shards, s, rt, s.eval_limit)

    @property
    def corrupt_skipped(self) -> int:
        return self.train_loader.stats.corrupt + self.test_loader.stats.corrupt

    def __call__(self, method, probe_epochs: int = 0) -> dict:
        """kNN accuracy, the online probe's, and with ``probe_epochs`` an offline linear probe's."""
        s, rt = self.s, self.rt
        was_training = method.training
        method.eval()
        try:
            with torch.no_grad(), rt.autocast():
                train_f, train_y = extract_features(method.backbone, self.train_loader, rt.device)
                test_f, test_y = extract_features(method.backbone, self.test_loader, rt.device)
            train_f, test_f = train_f.float(), test_f.float()
            result = {
                "knn_acc": float(knn_accuracy(train_f, train_y, test_f, test_y, k=s.knn_k, T=s.knn_t)),
                "eval_samples": int(len(test_y)),
                "knn_train_samples": int(len(train_y)),
            }
            with torch.no_grad():
                logits = method.probe(test_f.to(next(method.probe.parameters()).dtype))
                result["online_probe_acc"] = float((logits.argmax(1) == test_y.to(logits.device)).float().mean())
            if probe_epochs:
                result["linear_probe_acc"] = float(
                    linear_probe(train_f, train_y, test_f, test_y, epochs=probe_epochs, seed=s.seed)
                )
            if self.corrupt_skipped:
                result["eval_corrupt_skipped"] = self.corrupt_skipped
        finally:
            method.train(was_training)
        return result


def format_result(result: dict, step: int) -> str:
    parts = [f"kNN {result['knn_acc']:.2%}", f"online probe {result['online_probe_acc']:.2%}"]
    if "linear_probe_acc" in result:
        parts.append(f"offline linear probe {result['linear_probe_acc']:.2%}")
    return f"final accuracy at step {step} on {result['eval_samples']} test images: " + ", ".join(parts)


def random_init_baseline(s) -> dict:
    """The run's evaluation of a randomly initialised backbone (same seed): what training has to beat."""
    from models.engine import build_method_for, plan_eval, setup_runtime

    data = plan_eval(s.eval_shards, s.train_labels)
    rt = setup_runtime(s.device, s.precision)
    torch.manual_seed(s.seed)
    method = build_method_for(s, data.num_classes).to(rt.device)
    return Evaluator(data, s, rt)(method, probe_epochs=s.probe_epochs)

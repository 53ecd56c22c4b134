"""Plans exact weighted epochs over shard sets and runs DALI decoding + augmentation.

``mixture`` (``--shards`` → sources and weights), ``sampler`` (the epoch plan), ``reader``
(memory-mapped tar access), ``augment`` (per-view DALI ops and presets), ``pipeline``
(``TrainLoader``, ``EvalLoader``), ``audit`` (``python -m loaders audit``).
"""

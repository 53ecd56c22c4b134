"""Plans exact weighted epochs over shard sets and delivers batches: DALI decodes and crops, a batched torch
colour stage does the rest of the augmentation.

Two groups: ``loaders.recipe`` (what a run trains on: the mixture, the augmentation presets, the AdaInf
inflation policy and where they meet) and ``loaders.batch`` (how a batch is made: sampler, table, params,
feed, graph, delivery, colour, loader); beside them ``audit`` and ``preview`` (``python -m loaders
audit|preview``). The path of a batch is told once, in ``docs/design.md``.
"""

"""Plans exact weighted epochs over shard sets and runs DALI decoding + augmentation.

Along the data path, one noun per module: ``mixture`` (``--shards`` → sources and weights), ``sampler``
(the exact epoch plan), ``reader`` (one shard set: memory-mapped tars, per-sample table, verdicts),
``table`` (the samples of all sources as one table; a batch's bytes in one copy), ``params`` (every random
parameter drawn on the host, and where each travels), ``feed`` (what DALI's external source calls),
``graph`` (the DALI graphs: decode and crop), ``delivery`` (onto the model's device, off the training
thread), ``colour`` (the colour stage: jitter, grayscale, blur, solarization, flip, normalisation, as one
batched tensor program), ``loader`` (``TrainLoader``, ``EvalLoader``). Around them: ``augment`` (view
configs and the release's presets), ``policy`` and ``recipe`` (the AdaInf rule and where the presets,
policy and flags meet), ``audit`` and ``preview`` (``python -m loaders audit|preview``).
"""

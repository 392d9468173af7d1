"""Defaults every experiment config starts from (``get_config()`` then override)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # or "bfloat16" (compute dtype; params stay float32)

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "digits"
    c.dataset.protocol = "stratified"
    c.dataset.split_seed = 0
    c.dataset.max_shift = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.embedding_dim = 64

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "supap"
    c.loss.include_self = False
    c.loss.hparams = ml_collections.ConfigDict()

    c.batch = ml_collections.ConfigDict()
    c.batch.classes_per_batch = 10
    c.batch.samples_per_class = 16

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9
    c.optimizer.schedule = "constant"
    c.optimizer.decay_at = (0.5, 0.75)
    c.optimizer.decay_factor = 0.3
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip = 0.0

    c.num_steps = 300
    c.log_every = 10
    c.eval_every = 100
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.best_metric = "map@r"
    return c

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
    c.model.pretrained = ml_collections.FieldReference(None, field_type=str)  # .pth/.npz weights

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "supap"
    c.loss.include_self = False  # True: the query is its own positive (docs/conventions.md)
    # With [N, L] label paths (SOP, iNat, folder): False trains the loss on the finest level
    # (column 0: class-level positives, as the flat papers do); True hands the whole paths to
    # rankax.batch_loss, whose relevance is then graded by the hierarchy (H-AP, SupNDCG).
    c.loss.hierarchical = False
    c.loss.hparams = ml_collections.ConfigDict()

    c.batch = ml_collections.ConfigDict()
    c.batch.classes_per_batch = 10
    c.batch.samples_per_class = 16
    c.batch.sampler = "pk"  # or "hierarchical" (SupRank)
    c.batch.super_classes_per_batch = 2  # hierarchical sampler only
    c.batch.batches_per_super_tuple = 5  # hierarchical sampler only

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9
    c.optimizer.schedule = "constant"
    c.optimizer.final_lr_ratio = 0.0  # cosine: decay to lr * final_lr_ratio
    c.optimizer.decay_at = (0.5, 0.75)
    c.optimizer.decay_factor = 0.3
    c.optimizer.warmup_steps = 0
    c.optimizer.grad_clip = 0.0
    c.optimizer.freeze_bn_params = False

    # Image datasets: batches decoded ahead of the step by `workers` processes (-1: one per core
    # but one; 0: threads of the main process), `prefetch` batches ahead per worker, shipped as
    # uint8 and normalised on the device (rankax.data.loader). In-memory data ignores this.
    c.input = ml_collections.ConfigDict()
    c.input.workers = -1
    c.input.prefetch = 2

    c.xbm = ml_collections.ConfigDict()
    c.xbm.size = 0  # cross-batch memory slots (0 = off)
    c.xbm.start_step = 0  # rank against the memory from this step on

    c.num_devices = 0  # data-parallel devices (0 = all visible)
    c.loss_sharding = "shard_map"  # or "jit" (see train_lib.make_train_step)
    c.num_steps = 300
    c.log_every = 10
    c.eval_every = 100
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    # A step whose loss, gradient or embeddings are not finite is never applied; then
    # "raise" stops with NonFiniteLossError (step, batch indices, terms), "skip" goes on to
    # the next batch and raises after max_consecutive_nonfinite such steps in a row.
    c.on_nonfinite = "raise"
    c.max_consecutive_nonfinite = 10
    c.best_metric = "map@r"
    c.eval_protocol = "retrieval"  # or "revisited" (ROxford/RParis, needs revisited_gnd)
    c.revisited_gnd = ml_collections.FieldReference(None, field_type=str)  # gnd_roxford5k.pkl
    c.eval_backend = "exact"
    c.eval_ks = (1, 2, 4, 8)
    c.eval_batch_size = 512
    c.eval_baselines = True  # raw pixels (in-memory data) and the untrained network
    return c

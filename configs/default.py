"""Defaults every experiment config starts from (``get_config()`` then override)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.dtype = "float32"  # or "bfloat16" (compute dtype; params stay float32)
    # "mixed": bfloat16 compute, float32 params/optimizer/loss (the papers' fp16 autocast);
    # "float32": compute in `dtype` (rankax.train.state.compute_dtype).
    c.precision = "float32"
    # The model the run reports (metrics.json): "last" (the final state) or "best" (the
    # evaluated checkpoint with the highest `best_metric`).
    c.model_selection = "last"

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "digits"
    c.dataset.protocol = "stratified"
    c.dataset.split_seed = 0
    c.dataset.max_shift = 0

    c.model = ml_collections.ConfigDict()
    c.model.name = "mlp"
    c.model.embedding_dim = 64
    # .pth/.npz weights; None: not set (paper backbones warn); "": from scratch on purpose
    c.model.pretrained = ml_collections.FieldReference(None, field_type=str)

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "supap"
    c.loss.include_self = False  # True: the query is its own positive (docs/conventions.md)
    # With [N, L] label paths (SOP, iNat, folder): False trains the loss on the finest level
    # (column 0: class-level positives, as the flat papers do); True hands the whole paths to
    # rankax.batch_loss, whose relevance is then graded by the hierarchy (H-AP, SupNDCG).
    c.loss.hierarchical = False
    c.loss.hparams = ml_collections.ConfigDict()
    c.loss.weight = 1.0  # the main loss's weight in the objective
    # Extra weighted terms, each a loss of the embeddings that may own parameters (class
    # proxies) trained by its own optimizer: terms.<term> = {name, weight, hparams,
    # label_level, optimizer: {name, lr, weight_decay, schedule, ...}} (docs/training.md).
    c.loss.terms = ml_collections.ConfigDict()

    c.batch = ml_collections.ConfigDict()
    c.batch.classes_per_batch = 10
    c.batch.samples_per_class = 16
    # or "m_per_class", "hierarchical" (rankax's own), "hierarchical_pairs" (ROADMAP's and
    # SupRank's), "pk_replacement" (docs/data.md)
    c.batch.sampler = "pk"
    c.batch.super_classes_per_batch = 2  # hierarchical samplers only
    c.batch.batches_per_super_tuple = 5  # hierarchical samplers only (SupRank's SOP yaml: 5)
    c.batch.m_per_class_rule = "official"  # m_per_class sampler only: or "fixed" (docs/data.md)

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "adamw"
    c.optimizer.lr = 1e-3
    c.optimizer.head_lr = ml_collections.FieldReference(None, field_type=float)
    c.optimizer.head_weight_decay = ml_collections.FieldReference(None, field_type=float)  # None: same
    c.optimizer.weight_decay = 1e-4
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = False  # sgd: Nesterov momentum (torch's SGD(nesterov=True))
    c.optimizer.schedule = "constant"
    c.optimizer.final_lr_ratio = 0.0  # cosine: decay to lr * final_lr_ratio
    c.optimizer.final_lr = ml_collections.FieldReference(None, field_type=float)  # absolute floor
    c.optimizer.decay_at = (0.5, 0.75)  # "step": fractions of the run
    c.optimizer.decay_epochs = ()  # "multistep": epochs (MultiStepLR milestones)
    c.optimizer.decay_every_epochs = 0  # "step_epochs": every k epochs (StepLR)
    c.optimizer.decay_factor = 0.3
    c.optimizer.warmup_steps = 0  # linear warm-up from 0 replacing the first steps (shifts no milestone)
    c.optimizer.schedule_unit = "step"  # or "epoch": lr constant within an epoch (torch per-epoch)
    # Frozen warm-up: `frozen_groups` ("backbone", "head", a loss term) get no update for the
    # first `frozen_warmup_epochs` epochs; the schedules ("all", or only the "frozen" ones)
    # start counting when it ends (rankax.train.optim).
    c.optimizer.frozen_warmup_epochs = 0
    c.optimizer.frozen_groups = ()
    c.optimizer.warmup_paused_schedules = "all"
    c.optimizer.grad_clip = 0.0
    c.optimizer.freeze_bn_params = False

    # Image datasets: batches decoded ahead of the step by `workers` processes (-1: auto, i.e.
    # threads of the training process on hosts of <= 4 cores, else one process per core but
    # one; 0: threads of the training process), `prefetch` batches ahead per worker, shipped as
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
    # > 0: the run lasts this many of the sampler's epochs (num_steps = the first step of epoch
    # num_epochs, exact for samplers whose epochs vary in length); 0: num_steps decides.
    c.num_epochs = 0
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
    # Label levels evaluated one by one (rankax.retrieval.evaluate_levels: binary metrics per
    # level and their means, DyML's protocol), e.g. (0, 1, 2); (): the labels as given.
    c.eval_levels = ()
    # With eval_levels: True reports the means over the levels under the plain metric names
    # (DyML's "overall accuracy"); False keeps the plain names for the labels as given and adds
    # the levels' metrics beside them (SupRank's SOP and iNaturalist runs).
    c.eval_level_means = True
    c.eval_batch_size = 512
    c.eval_baselines = True  # raw pixels (in-memory data) and the untrained network
    return c

"""Evaluate retrieval from precomputed embeddings or from a training workdir.

    python -m experiments.evaluate --workdir runs/digits [--config FILE] [--config.key=value ...]
        [--step N] [--output metrics.json] [--save_embeddings test.npz]
    python -m experiments.evaluate --config FILE --weights net.pth [--config.key=value ...]
        [--output metrics.json] [--save_embeddings test.npz]
    python -m experiments.evaluate --embeddings test.npz [--gallery gallery.npz] \\
        [--backend auto|exact|scann] [--scann_config auto|brute_force|tree_ah] \\
        [--scann_leaves_to_search N] \\
        [--ks 1,2,4,8] [--levels 0,1,2] [--normalize] [--output metrics.json]

A workdir (``--workdir``, or its older name ``--checkpoint``) is evaluated with the config its
training run recorded (``<workdir>/config.json``), overrides included, so nothing has to be
repeated; ``--config FILE`` starts from a config file instead, and ``--config.<key>=<value>``
overrides either, as in ``experiments.train``. The model the run reports (the newest readable
checkpoint, or under ``model_selection="best"`` the best step of its history), or ``--step``, is
restored without changing anything in the workdir, the test split of the config's dataset (and
its gallery, if any) is embedded and evaluated as the training run evaluates it: its
``eval_ks``, ``eval_levels`` and ``eval_backend`` unless ``--ks`` / ``--levels`` / ``--backend``
are given, and its ``eval_protocol`` (``revisited`` / ``landmarks`` runs get their protocol's metrics);
``--save_embeddings FILE.npz`` also writes those embeddings (a separate gallery to
``FILE_gallery.npz``). The metrics of a workdir include
``step``, the checkpoint evaluated.

``--weights FILE`` with ``--config FILE`` evaluates the config's model with the weights of a
file instead of a training run: a network trained by the official ROADMAP/SupRank/HAPPIER
code (its ``net_state``, see ``rankax.models.convert.retrievalnet_to_flax``), or ImageNet
weights for a baseline before training. It is the config's own evaluation, as above, with
``model.pretrained`` set to the file; the file must hold tensors only (the official
``epoch_N.ckpt`` also pickle other objects: save their ``net_state`` alone first, docs/models.md).

Input files are ``.npz`` archives with two arrays:

* ``embeddings``: ``[N, D]`` float embeddings;
* ``labels``: ``[N]`` integer class ids, or ``[N, L]`` integer label paths (column 0 the
  finest level) for the hierarchical metrics (H-AP, NDCG, ASI).

Without ``--gallery`` the file is both the queries and the gallery, each query excluded from
its own list (SOP/CUB/Cars/iNat); with it, the first file holds the queries. The similarity is
the inner product (``--normalize`` L2-normalises first, for cosine similarity). The metrics
are printed as a table and, with ``--output``, written as JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import time

import numpy as np

from experiments import cli

# rankax (and so JAX, seconds to import) is imported inside the functions: the command's Ctrl-C
# handler is installed before (cli.interruptible).

NPZ_EMBEDDINGS = "embeddings"
NPZ_LABELS = "labels"


def load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings, labels)`` from an ``.npz`` file with the keys above; anything else is a
    one-line error."""
    expected = f"an .npz archive with arrays '{NPZ_EMBEDDINGS}' [N, D] and '{NPZ_LABELS}' [N] or [N, L]"
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:  # missing, unreadable, empty, not an array file
        why = "not a numpy file" if "pickled" in str(err) else err  # numpy's guess: a pickle
        raise cli.CliError(f"{path}: cannot read {expected} ({why})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise cli.CliError(f"{path}: a single array, not {expected} (np.savez writes one)")
    with data:
        missing = [key for key in (NPZ_EMBEDDINGS, NPZ_LABELS) if key not in data]
        if missing:
            raise cli.CliError(
                f"{path}: missing array(s) {missing}; expected keys '{NPZ_EMBEDDINGS}' [N, D] and "
                f"'{NPZ_LABELS}' [N] or [N, L] (found {sorted(data.keys())})"
            )
        embeddings, labels = np.asarray(data[NPZ_EMBEDDINGS]), np.asarray(data[NPZ_LABELS])
    if embeddings.ndim != 2:
        raise cli.CliError(f"{path}: '{NPZ_EMBEDDINGS}' must be [N, D], got shape {embeddings.shape}")
    if len(embeddings) == 0:
        raise cli.CliError(f"{path} holds no embeddings ('{NPZ_EMBEDDINGS}' has shape {embeddings.shape})")
    return embeddings, labels


def workdir_config(workdir: str, config: str | None, overrides, flag: str = "--workdir"):
    """The config to evaluate ``workdir`` with: the file ``config``, or else the one the
    training run recorded, with ``overrides`` applied."""
    from rankax.train import workdir as workdir_lib

    if not os.path.isdir(workdir):
        what = "is not a directory" if os.path.exists(workdir) else "does not exist"
        raise cli.CliError(f"{flag} {workdir} {what} (the --workdir of a training run)")
    try:
        record = workdir_lib.read(workdir)
    except ValueError as err:  # a config.json that is not JSON
        raise cli.CliError(f"{flag}: {err}", err) from None
    if config:
        cfg = cli.load_config(config)
    elif record is None:
        raise cli.CliError(
            f"{flag} needs --config (the experiment config it was trained with): {workdir} records "
            f"none ({workdir_lib.RECORD} is written by experiments.train)"
        )
    elif not isinstance(record.get("config"), dict):
        raise cli.CliError(f"{flag} needs --config: {workdir}'s {workdir_lib.RECORD} records no config")
    else:
        cfg = cli.config_from_record(record["config"])
    cli.apply_overrides(cfg, overrides)
    if config and record is not None:
        _check_evaluated_keys(cfg, record, {key for key, _ in overrides}, workdir, config)
    from rankax.train import ConfigError, config_checks

    try:  # the checks of experiments.train: a bad override is one line naming the key
        config_checks.check_config(cfg)
    except ConfigError as err:
        raise cli.CliError(f"{flag}: {err}", err) from None
    return cfg


#: Model keys that only choose the starting weights: a checkpoint replaces them.
INIT_ONLY_KEYS = frozenset({"model.pretrained", "model.pretrained_distilled"})
#: Dataset keys that choose the test split (rankax.data.registry): another value evaluates
#: other images, which can overlap the run's training split. Keys that locate the files
#: (root, data_dir) or shape training only (max_shift, crops) are free.
SPLIT_KEYS = frozenset({"dataset.name", "dataset.protocol", "dataset.split_seed", "dataset.split_dir",
                        "dataset.hierarchy", "dataset.variant", "dataset.benchmark", "dataset.split_column",
                        "dataset.gallery_csv", "dataset.csv_file", "dataset.label_columns"})


def _check_evaluated_keys(cfg, record: dict, overridden: set[str], workdir: str, config: str) -> None:
    """A :class:`cli.CliError` where the file ``config`` changes ``model.*`` keys or the
    :data:`SPLIT_KEYS` from the config ``workdir`` recorded without a ``--config.<key>``
    override saying so. Model keys that add no parameters (pooling, feature_norm, frozen_bn,
    dtype) restore without complaint and would evaluate another network than the one trained;
    the split keys choose the test split, which another one can make overlap the training
    images."""
    from rankax.train import workdir as workdir_lib

    def compared(key: str, old: object) -> bool:  # a split key an older record lacks: no change
        split = key in SPLIT_KEYS and old != "<absent>"
        return (key.startswith("model.") or split) and key not in INIT_ONLY_KEYS

    changed = {k: v for k, v in workdir_lib.differences(record.get("config", {}), cfg).items()
               if compared(k, v[0]) and k not in overridden}
    if changed:
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise cli.CliError(
            f"--config {config} evaluates another network or test split than the one {workdir} trained "
            f"({shown}). Drop --config to evaluate with the recorded config, or override those keys "
            f"explicitly (--config.{next(iter(changed))}=...) to evaluate the checkpoint that way"
        )


def restore(cfg, checkpoint: str, step: int | None, flag: str):
    """``(state, data)``: checkpoint ``step`` of the workdir ``checkpoint`` and the dataset of
    ``cfg``, read-only; errors as one-line CLI errors."""
    from rankax.train import CheckpointReadError, ConfigError, evaluators

    try:
        return evaluators.restore_for_evaluation(cfg, checkpoint, step=step)
    except (FileNotFoundError, CheckpointReadError, ConfigError) as err:
        raise cli.CliError(f"{flag}: {err}", err) from err
    except ValueError as err:  # a config value the data or model code checked (names the key)
        raise cli.CliError(f"{flag}: {err}") from None


def weights_config(config: str, weights: str, overrides) -> object:
    """The config file ``config`` with ``overrides``, its model starting from the file ``weights``."""
    from rankax.train import ConfigError, config_checks

    if not os.path.isfile(weights):
        raise cli.CliError(f"--weights {weights}: no such file (a .pth/.npz/.safetensors file of tensors)")
    cfg = cli.load_config(config)
    cli.apply_overrides(cfg, overrides)
    cfg.model.pretrained = weights
    if cfg.model.get("pretrained_distilled", False):  # says which ImageNet file a recipe starts from;
        cfg.model.pretrained_distilled = False  # a trained DeiT net has no distillation token left
    try:
        config_checks.check_config(cfg)
    except ConfigError as err:
        raise cli.CliError(f"--config {config}: {err}", err) from None
    return cfg


def load_model(cfg, args):
    """``(state, data)``: the model ``args`` names (a workdir's checkpoint, or the config's
    model with ``--weights``) and the dataset of ``cfg``; errors as one-line CLI errors."""
    if args.checkpoint:
        return restore(cfg, args.checkpoint, args.step, args.flag)
    from rankax.train import ConfigError, evaluators, input_pipeline

    try:
        data = input_pipeline.load(cfg)
        return evaluators.evaluation_state(cfg, data), data
    except ConfigError as err:  # the weights: unreadable, or not this config's model
        raise cli.CliError(f"--weights: {err}", err) from None
    except ValueError as err:  # a config value the data or model code checked (names the key)
        raise cli.CliError(f"--config {args.config}: {err}") from None


def embed_test_split(cfg, state, data, flag: str = "--workdir"):
    """``(inputs, labels, gallery_inputs, gallery_labels)``: the test split of ``cfg`` (and its
    gallery, if any) embedded by ``state``'s model, as the training run's evaluation embeds it.
    The embeddings are computed here: datasets may not fit in memory as images."""
    from rankax.retrieval.evaluator import embed_in_batches
    from rankax.train import evaluators, input_pipeline

    try:  # checked before the test split is embedded
        evaluators.eval_levels(cfg, data.test.labels)
    except ValueError as err:
        raise cli.CliError(f"{flag}: {err} (--levels or the run's eval_levels)") from None
    bs = int(cfg.eval_batch_size)
    # Read as the training run's evaluation reads: image datasets by config.input.workers
    # processes as uint8 pixels normalised on the device (it used one thread and float32 pixels
    # normalised on the host, 4x the bytes); [multihost] each process embeds its share of every
    # batch and all get every embedding. Each batch is split over the devices of
    # config.num_devices, as in training.
    reading = input_pipeline.eval_reading(cfg, data)
    normalize = input_pipeline.normalizer(data.test) if reading["raw"] else None
    embed = evaluators.embed_fn(state, normalize, _devices(cfg))
    queries = embed_in_batches(embed, data.test, bs, **reading)
    gallery = None if data.gallery is None else embed_in_batches(embed, data.gallery, bs, **reading)
    gallery_labels = None if data.gallery is None else np.asarray(data.gallery.labels)
    return queries, np.asarray(data.test.labels), gallery, gallery_labels


def _devices(cfg) -> list:
    """This process's devices of the run's ``num_devices``, or all of them on a machine with
    fewer (the embeddings do not depend on the count)."""
    import jax

    from rankax.train import state as state_lib

    try:
        return state_lib.local_devices(cfg)
    except ValueError:  # trained on more devices than this machine has
        return jax.local_devices()


def gallery_path(path: str) -> str:
    """Where ``--save_embeddings path`` writes the gallery: ``<stem>_gallery.npz`` beside it."""
    stem = path[: -len(".npz")] if path.endswith(".npz") else path
    return f"{stem}_gallery.npz"


def save_embeddings(path: str, queries: np.ndarray, labels: np.ndarray, gallery: np.ndarray | None,
                    gallery_labels: np.ndarray | None) -> None:
    """Writes the query embeddings to ``path`` and a separate gallery to :func:`gallery_path`
    (the queries alone would be re-evaluated as their own gallery), and says how to evaluate them."""
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{NPZ_EMBEDDINGS: queries, NPZ_LABELS: labels})
    if gallery is None:
        print(f"Wrote {path} (evaluate again with --embeddings {path})")
        return
    np.savez(gallery_path(path), **{NPZ_EMBEDDINGS: gallery, NPZ_LABELS: gallery_labels})
    print(f"Wrote {path} and {gallery_path(path)} (evaluate again with --embeddings {path} "
          f"--gallery {gallery_path(path)})")


def format_table(metrics: dict) -> str:
    width = max(len(k) for k in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ---------"]
    for key, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"{key:<{width}}  {shown}")
    return "\n".join(lines)


FLAGS = {
    "workdir": "training workdir to evaluate (its recorded config unless --config)",
    "checkpoint": "older name of --workdir",
    "config": "experiment config file (default: the one the workdir recorded)",
    "step": "with --workdir: this checkpoint step (default: the model the run reports: the newest "
            "readable, or its best step under model_selection='best')",
    "weights": "with --config: evaluate the config's model with these weights (torchvision, timm, or a "
               "trained official RetrievalNet's net_state) instead of a training run",
    "embeddings": "queries (and gallery) .npz: embeddings, labels",
    "gallery": "separate gallery .npz (default: queries = gallery)",
    "backend": "one of auto, exact, scann (default: the run's eval_backend, else exact)",
    "scann_config": "one of auto, brute_force, tree_ah (default auto)",
    "scann_leaves_to_search": "tree_ah leaves scored per query (default 45 % of them; docs/evaluation.md)",
    "ks": "comma-separated k of recall@k (default: the run's eval_ks, else 1,2,4,8)",
    "levels": "comma-separated label columns evaluated one by one, with their means (DyML's "
              "protocol; default: the run's eval_levels, else the labels as given; a run with "
              "eval_level_means=False keeps its plain names for the labels as given)",
    "normalize": "L2-normalise the embeddings first",
    "block_size": "queries per step (default: 512 on the CPU, 2048 on accelerators)",
    "output": "write the metrics to this JSON file",
    "save_embeddings": "with --workdir or --weights: also write the query embeddings (.npz; a separate "
                       "gallery goes to <name>_gallery.npz)",
    **cli.DISTRIBUTED_FLAGS,  # [multihost]
}


def _int_list(values: dict, name: str, low: int, example: str) -> tuple[int, ...] | None:
    """``--name=a,b,c`` as a tuple of integers ``>= low`` (None when not given)."""
    if name not in values:
        return None
    try:
        out = tuple(int(k) for k in values[name].split(",") if k.strip())
    except ValueError:
        out = ()
    if not out or min(out) < low:
        raise cli.CliError(f"--{name} must be comma-separated integers >= {low} (e.g. {example}), "
                           f"got {values[name]!r}")
    return out


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    values, overrides, want_help = cli.parse(argv, FLAGS, bool_flags=("normalize",))
    if want_help:
        flags = "\n".join(f"  --{name:<16} {text}" for name, text in FLAGS.items())
        print(f"{__doc__.split(chr(10) * 2 + 'Input files')[0].strip()}\n\nflags:\n{flags}")
        raise SystemExit(0)
    if "workdir" in values and "checkpoint" in values:
        raise cli.CliError("--workdir and --checkpoint name the same thing: pass one")
    flag = "--checkpoint" if "checkpoint" in values else "--workdir"
    workdir = values.get("workdir", values.get("checkpoint"))
    given_sources = (("--workdir", workdir is not None), ("--weights", "weights" in values),
                     ("--embeddings", "embeddings" in values))
    sources = [name for name, given in given_sources if given]
    if len(sources) != 1:
        raise cli.CliError("pass one of --workdir DIR (a training run), --config FILE --weights FILE (a "
                           "network's weights) or --embeddings FILE.npz" + (f"; got {', '.join(sources)}"
                                                                            if sources else ""))
    if "weights" in values and "config" not in values:
        raise cli.CliError("--weights needs --config FILE: the experiment config whose model and data to use")
    if "step" in values and workdir is None:
        raise cli.CliError("--step applies to --workdir evaluation only")
    same_file = "gallery" in values and "embeddings" in values and (
        os.path.abspath(values["gallery"]) == os.path.abspath(values["embeddings"]))
    if same_file:
        raise cli.CliError("--gallery is the --embeddings file: omit --gallery to evaluate the set against "
                           "itself (each query then leaves itself out of its list; as its own gallery it "
                           "would find itself first)")
    if "gallery" in values and "embeddings" not in values:
        raise cli.CliError("--gallery applies to --embeddings evaluation; a run's or config's gallery is its "
                           "dataset's (--config.dataset.* chooses the data)")
    if "weights" in values and any(key == "model.pretrained" for key, _ in overrides):
        raise cli.CliError("--weights sets model.pretrained: drop --config.model.pretrained")
    if "embeddings" in values:
        given = [f"--{name}" for name in ("save_embeddings", "config") if name in values]
        given += ["--config.* overrides"] if overrides else []
        if given:
            raise cli.CliError(f"{', '.join(given)} apply to --workdir or --weights evaluation, "
                               "not --embeddings")
    from rankax.retrieval.evaluation import BACKENDS
    from rankax.retrieval.scann_backend import SCANN_CONFIGS

    for name, choices in (("backend", BACKENDS), ("scann_config", SCANN_CONFIGS)):
        if name in values and values[name] not in choices:
            raise cli.CliError(f"--{name}={values[name]!r}: one of {', '.join(choices)}")
    if "scann_leaves_to_search" in values and values.get("scann_config") == "brute_force":
        raise cli.CliError("--scann_leaves_to_search applies to --scann_config tree_ah or auto (a tree); "
                           "brute_force has no leaves")
    try:
        step = int(values["step"]) if "step" in values else None
        block_size = int(values["block_size"]) if "block_size" in values else None
        leaves = int(values["scann_leaves_to_search"]) if "scann_leaves_to_search" in values else None
    except ValueError as err:
        raise cli.CliError(
            f"--step, --block_size and --scann_leaves_to_search take integers ({err})"
        ) from None
    bounds = (("step", step, 0), ("block_size", block_size, 1), ("scann_leaves_to_search", leaves, 1))
    for name, value, low in bounds:
        if value is not None and value < low:
            raise cli.CliError(f"--{name} must be >= {low}, got {value}")
    ks = _int_list(values, "ks", 1, "1,2,4,8")
    levels = _int_list(values, "levels", 0, "0,1,2")
    if "save_embeddings" in values and not values["save_embeddings"].endswith(".npz"):
        values["save_embeddings"] += ".npz"  # where np.savez writes it
    for name in ("output", "save_embeddings"):
        if name in values and _is_process_zero(values):  # [multihost] process 0 writes
            cli.check_output_file(f"--{name}", values[name])
    _check_outputs_spare_inputs(values, workdir)
    args = argparse.Namespace(
        checkpoint=workdir, flag=flag if workdir else "--weights", config=values.get("config"), step=step,
        weights=values.get("weights"),
        embeddings=values.get("embeddings"), gallery=values.get("gallery"),
        backend=values.get("backend"), scann_config=values.get("scann_config", "auto"),
        scann_options={} if leaves is None else {"leaves_to_search": leaves},
        ks=ks, levels=levels, normalize=bool(values.get("normalize", False)),
        block_size=block_size, output=values.get("output"), save_embeddings=values.get("save_embeddings"),
        distributed={k: values[k] for k in cli.DISTRIBUTED_FLAGS if k in values},  # [multihost]
        given=frozenset(values),
    )
    return args, overrides


def _is_process_zero(values: dict) -> bool:
    """Whether ``--process_id`` is absent or names process 0 (a value that is not an integer is
    refused when the distributed runtime starts)."""
    try:
        return int(values.get("process_id") or 0) == 0
    except ValueError:
        return True


#: What a training run writes in its workdir (files, and folders whose whole content is its).
RUN_FILES = ("config.json", "metrics.json", "history.json", "baselines.json", "baselines.previous_data.json",
             "nonfinite_steps.jsonl", "training_curves.png", "test_embeddings.png", ".lock")
RUN_FOLDERS = ("checkpoints", "checkpoints.corrupt", "tensorboard")


def _run_owned(path: str, workdir: str) -> bool:
    """Whether ``path`` is a file the training run in ``workdir`` writes (new files beside them,
    ``--output runs/x/eval.json``, are the user's)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(workdir))
    first = rel.split(os.sep)[0]
    return (rel in RUN_FILES or first in RUN_FOLDERS
            or (rel.startswith("metrics.step") and rel.endswith(".json")))


def _check_outputs_spare_inputs(values: dict, workdir: str | None) -> None:
    """A :class:`cli.CliError` where ``--output`` or ``--save_embeddings`` (with its gallery
    file) would overwrite an input, each other, or one of the evaluated run's own files
    (:func:`_run_owned`; evaluation leaves them as they are)."""
    def same(a: str, b: str) -> bool:
        return os.path.abspath(a) == os.path.abspath(b)

    written = [("--output", values.get("output"))]
    if "save_embeddings" in values:
        written += [("--save_embeddings", values["save_embeddings"]),
                    ("--save_embeddings", gallery_path(values["save_embeddings"]))]
    written = [(flag, path) for flag, path in written if path]
    read = [(f"--{name}", values[name]) for name in ("embeddings", "gallery", "weights", "config")
            if name in values]
    for i, (flag, path) in enumerate(written):
        for other_flag, other in read + written[:i]:
            if same(path, other) and flag != other_flag:
                raise cli.CliError(f"{flag} {path} would overwrite {other_flag} {other}: write another file")
        if workdir and _run_owned(path, workdir):
            raise cli.CliError(f"{flag} {path} is one of the training run's own files in {workdir}, which "
                               "evaluation leaves unchanged: write another file")


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    return cli.interruptible(lambda: _evaluate(*parse_args(argv)),  # parsing imports JAX too
                             lambda: "the evaluation stopped; the same command runs it again")


def _evaluate(args, overrides) -> dict:
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notices would bury the result
    main_process = not cli.start_distributed(args.distributed) or _is_main()  # [multihost]
    gallery = gallery_labels = None
    backend = args.backend or "exact"
    ks = (1, 2, 4, 8) if args.ks is None else args.ks
    levels, level_means = args.levels or (), True
    if args.checkpoint or args.weights:
        if args.checkpoint:
            cfg = workdir_config(args.checkpoint, args.config, overrides, args.flag)
        else:
            cfg = weights_config(args.config, args.weights, overrides)
        # The run's own evaluation unless the command line says otherwise.
        cfg.eval_ks = ks if args.ks is not None else tuple(cfg.eval_ks)
        cfg.eval_backend = backend if args.backend is not None else cfg.eval_backend
        if args.levels is not None:
            cfg.eval_levels = args.levels
        ks, backend = tuple(cfg.eval_ks), cfg.eval_backend
        levels = tuple(cfg.get("eval_levels", ()) or ())
        level_means = bool(cfg.get("eval_level_means", True))
        if cfg.get("eval_protocol", "retrieval") != "retrieval":  # revisited / landmarks
            _check_protocol_flags(args, cfg.eval_protocol)
            return _report(args, overrides, backend, _protocol_metrics(cfg, args), main_process)
        state, data = load_model(cfg, args)
        inputs, labels, gallery, gallery_labels = embed_test_split(cfg, state, data, args.flag)
        embed_fn, step = np.asarray, (int(state.step) if args.checkpoint else None)  # embedded above
        if args.save_embeddings and main_process:
            save_embeddings(args.save_embeddings, inputs, labels, gallery, gallery_labels)
    else:
        embed_fn, step = np.asarray, None  # precomputed embeddings: the identity
        inputs, labels = load_npz(args.embeddings)
        if args.gallery:
            gallery, gallery_labels = load_npz(args.gallery)
    _check_scann_flags(args, backend)
    from rankax.retrieval import RetrievalEvaluator

    start = time.perf_counter()
    try:  # shapes, labels and values the evaluation checks (each names its argument)
        evaluator = RetrievalEvaluator(
            inputs, labels, gallery_inputs=gallery, gallery_labels=gallery_labels,
            batch_size=max(len(inputs), 1), backend=backend, ks=ks, levels=levels, level_means=level_means,
            normalize=args.normalize, scann_config=args.scann_config, scann_options=args.scann_options,
            block_size=args.block_size,
        )
        metrics = evaluator.run(embed_fn)
    except (ValueError, TypeError) as err:
        source = args.checkpoint or args.weights or (
            f"--embeddings {args.embeddings} --gallery {args.gallery}" if args.gallery else args.embeddings)
        raise cli.CliError(f"{source}: {err}") from None
    metrics["seconds"] = time.perf_counter() - start
    if step is not None:  # the checkpoint evaluated (the best one under model_selection="best")
        metrics["step"] = step
    return _report(args, overrides, backend, metrics, main_process, used=evaluator.backend_used)


def _check_scann_flags(args, backend: str) -> None:
    """ScaNN's flags with the exact backend (given, the run's, or the default) were ignored."""
    scann_flags = [f"--{n}" for n in ("scann_config", "scann_leaves_to_search") if n in args.given]
    if scann_flags and backend == "exact":
        where = "--backend exact" if args.backend else "the exact backend (pass --backend scann or auto)"
        raise cli.CliError(f"{', '.join(scann_flags)} only apply to --backend scann or auto; this evaluation "
                           f"uses {where}")


#: Flags of the label-based evaluation that the revisited and landmarks protocols do not take.
RETRIEVAL_ONLY_FLAGS = ("backend", "normalize", "block_size", "scann_config", "scann_leaves_to_search",
                        "save_embeddings", "levels")
#: The revisited protocol reads ``--ks`` as its mP@k cut-offs; the landmarks one has its own.
IGNORED_BY = {"revisited": RETRIEVAL_ONLY_FLAGS, "landmarks": (*RETRIEVAL_ONLY_FLAGS, "ks")}


def _check_protocol_flags(args, protocol: str) -> None:
    """A :class:`cli.CliError` naming the flags given that a ``protocol`` run would ignore."""
    ignored = [f"--{name}" for name in IGNORED_BY.get(protocol, RETRIEVAL_ONLY_FLAGS) if name in args.given]
    if ignored:
        raise cli.CliError(
            f"{', '.join(ignored)} apply to eval_protocol='retrieval' runs; this run evaluates with "
            f"eval_protocol={protocol!r}, whose settings come from its config (--config.* overrides)"
        )


def _protocol_metrics(cfg, args) -> dict:
    """The metrics of the run's own evaluation protocol (``eval_protocol``) on the restored
    checkpoint, as the training run computes them."""
    from rankax.retrieval.revisited import GroundTruthError
    from rankax.train import evaluators

    state, data = load_model(cfg, args)
    start = time.perf_counter()
    try:
        metrics = evaluators.evaluate_state(cfg, state, data)
    except FileNotFoundError as err:  # the protocol's ground truth (its message names the files)
        hint = " (--config.landmarks.root=DIR sets their folder)" if cfg.eval_protocol == "landmarks" else ""
        raise cli.CliError(f"{args.flag}: {err}{hint}") from None
    except GroundTruthError as err:  # a malformed ground-truth file (named in the message)
        raise cli.CliError(f"{args.flag}: {err}") from None
    except ValueError as err:  # the protocol's own config keys (named in the message)
        if not str(err).startswith("config."):
            raise
        raise cli.CliError(f"{args.flag}: {err}") from None
    metrics["seconds"] = time.perf_counter() - start
    if args.checkpoint:
        metrics["step"] = int(state.step)
    return metrics


def _report(args, overrides, backend: str, metrics: dict, main_process: bool,
            used: str | None = None) -> dict:
    """Prints the table and writes ``--output`` (process 0 only): the ``backend`` requested and,
    where the label-based evaluation ran, the one ``auto`` resolved to (``used``)."""
    if not main_process:  # [multihost] process 0 prints and writes
        return metrics
    print(format_table(metrics))
    if args.output:
        out = pathlib.Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        record = {"metrics": metrics, "backend": backend, "backend_used": used, "embeddings": args.embeddings,
                  "workdir": args.checkpoint, "weights": args.weights, "config": args.config,
                  "config_overrides": [f"--config.{k}={v}" for k, v in overrides],
                  "gallery": args.gallery, "normalize": args.normalize}
        out.write_text(json.dumps(record, indent=2) + "\n")
    return metrics


def _is_main() -> bool:
    from rankax.train import distributed

    return distributed.is_main()


if __name__ == "__main__":
    cli.run(main)

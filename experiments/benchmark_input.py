"""Input-pipeline throughput: rankax's pipeline against a PyTorch ``DataLoader`` on the same files.

Generates an image folder of JPEGs (default 500 x 400, the size of a typical SOP image), then
measures images per second of training batches (random-resized crop 224, flip; uint8 for
rankax, normalised float32 tensors for the baseline, as each hands them to its step):

- ``rankax``: :func:`rankax.data.loader.train_batches` with ``workers`` grain processes, then
  with ``workers`` decoding threads in this process (what ``config.input.workers=-1`` picks on
  small hosts), then processes with full-resolution decoding (no JPEG draft mode);
- ``DataLoader``: ``torch.utils.data.DataLoader(num_workers=workers)`` over a dataset that
  decodes with PIL and applies torchvision's ``RandomResizedCrop(224, scale=(0.16, 1))``,
  ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` (the official ROADMAP/SupRank/PNP
  train transform). Without torchvision the same operations are written with PIL and torch.

Both run with ``workers`` = the host's cores (``--workers``) and report images/s per core;
the first ``--warmup`` batches (worker start-up) are not timed. Rates are measured in the same
run, one after the other, so the ratio is what to read on a noisy host.

``--end-to-end`` (a GPU host): also trains ResNet-50 at 224 px (batch ``--batch``) through
``rankax.train`` on the folder and reports its steady images/s as a fraction of the same step
fed from device memory.

Usage::

    python -m experiments.benchmark_input                       # CPU: pipeline vs DataLoader
    python -m experiments.benchmark_input --docs docs/benchmarks_input.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np

from experiments import flags, machine
from rankax.data import folder, loader, samplers, transforms


def make_folder(root: str, n: int, size: tuple[int, int], classes: int = 32) -> str:
    """``n`` random smooth JPEGs of ``size`` (w, h) under ``root`` plus ``data.csv``; returns root."""
    from PIL import Image

    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    lines = ["path,class,split"]
    for i in range(n):
        low = rng.integers(0, 256, (size[1] // 16 + 1, size[0] // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(low).resize(size, Image.BICUBIC)  # photo-like: smooth, compressible
        image.save(os.path.join(root, "images", f"{i}.jpg"), quality=90)
        lines.append(f"images/{i}.jpg,{i % classes},{'test' if i % 8 == 7 else 'train'}")
    with open(os.path.join(root, "data.csv"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


def _rate(batches, warmup: int, batch: int) -> float:
    """Images/s over the batches after the first ``warmup``."""
    t0, n = None, 0
    for i, _ in enumerate(batches):
        if i == warmup - 1 or (warmup == 0 and t0 is None):
            t0 = time.perf_counter()
            continue
        if t0 is not None:
            n += batch
    return n / (time.perf_counter() - t0)


def rankax_rate(root: str, args, *, workers: int, threads: int = 1, draft: bool = True) -> float:
    """Images/s of :func:`rankax.data.loader.train_batches` with ``workers`` processes (0: in
    this process with ``threads`` decoding threads)."""
    transform = transforms.ImageTransform(draft_train=draft)
    data = folder.load_folder(root, "data.csv", transform=transform, num_threads=threads)
    sampler = samplers.PKSampler(data.train.labels, args.batch // 4, 4, seed=0)
    steps = args.warmup + args.steps
    batches = loader.train_batches(
        data.train, sampler, seed=0, start=0, stop=steps, workers=workers, prefetch=2
    )
    try:
        return _rate(batches, args.warmup, args.batch)
    finally:  # the workers and their shared-memory batches go now
        loader.close(batches)


def _torch_transform():
    """torchvision's train transform, or the same operations in PIL + torch."""
    import torch

    mean = torch.tensor(transforms.IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(transforms.IMAGENET_STD).view(3, 1, 1)
    try:
        import torchvision.transforms as T

        return T.Compose([
            T.RandomResizedCrop(224, scale=(0.16, 1.0)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD),
        ]), "torchvision"
    except (ImportError, RuntimeError):
        from PIL import Image

        rng = np.random.default_rng()

        def transform(image):
            box = transforms.random_resized_crop_box(*image.size, rng, (0.16, 1.0), (3 / 4, 4 / 3))
            image = image.resize((224, 224), Image.BILINEAR, box=box)
            if rng.random() < 0.5:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
            return (x - mean) / std

        return transform, "PIL + torch (torchvision not importable)"


class _TorchFolder:
    """A map-style dataset: PIL decode + the torch transform."""

    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[i])


def dataloader_rate(root: str, args) -> tuple[float, str]:
    import torch

    transform, kind = _torch_transform()
    paths = [os.path.join(root, "images", f"{i}.jpg") for i in range(args.images) if i % 8 != 7]
    dataset = _TorchFolder(paths, np.arange(len(paths)) % 32, transform)
    steps = args.warmup + args.steps
    sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=steps * args.batch)
    dl = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch, sampler=sampler, num_workers=args.workers,
        persistent_workers=False, prefetch_factor=2 if args.workers else None,
    )
    torch.set_num_threads(1)
    return _rate(iter(dl), args.warmup, args.batch), kind


def _e2e_config(root: str, args):
    """ResNet-50 (``--model``) at 224 px on the generated folder, ``--batch`` images per step,
    float32 or bfloat16 compute, no evaluation before the end."""
    import ml_collections

    import configs.default

    c = configs.default.get_config()
    c.dataset = ml_collections.ConfigDict({"name": "folder", "root": root, "csv_file": f"{root}/data.csv"})
    c.model = ml_collections.ConfigDict({"name": args.model, "embedding_dim": 512})
    c.dtype = args.dtype
    c.loss.name = "supap"
    c.batch.classes_per_batch, c.batch.samples_per_class = args.batch // 4, 4
    c.input.workers = args.workers
    c.num_steps = 2 * args.steps
    c.log_every = args.steps  # the second window is the timed one (the first holds the warm-up)
    c.eval_every, c.eval_baselines = 0, False
    c.checkpoint_every = c.num_steps
    c.eval_batch_size = 64
    return c


def device_fed_rate(config, steps: int) -> float:
    """Images/s of the same jitted step fed one batch that already sits on the devices."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from rankax.train import input_pipeline, losses, state
    from rankax.train.step import make_train_step

    data = input_pipeline.load(config)
    mesh = state.make_mesh(config)
    sampler = input_pipeline.make_sampler(config, data)
    labels = losses.training_labels(config, data)
    replicated, sharded = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    st = jax.device_put(state.initial_state(config, data), replicated)
    step = make_train_step(config, input_pipeline.device_preprocess(config, data), mesh, labels.ndim)
    idx = sampler.indices(0)
    images = jax.device_put(data.train.get_pixels(idx, train=True, seed=0), sharded)
    y = labels[idx]
    st, m = step(st, images, y)
    float(m["loss"])  # compiled
    t = time.perf_counter()
    for _ in range(steps):
        st, m = step(st, images, y)
        bool(m["finite"])  # the loop reads each step's flag too
    return steps * len(idx) / (time.perf_counter() - t)


def end_to_end(root: str, args) -> list[tuple[str, float]]:
    """``[(what, img/s)]``: the training program on the folder (last window of its log) and the
    same step fed from device memory."""
    import json

    from rankax.train import loop

    config = _e2e_config(root, args)
    workdir = tempfile.mkdtemp(prefix="rankax-e2e-")
    loop.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "history.json")) as f:
        rates = [e["images_per_s"] for e in json.load(f) if "images_per_s" in e]
    fed = device_fed_rate(config, args.steps)
    return [
        ("train_and_evaluate on the JPEG folder", rates[-1]),
        ("the same step fed from device memory", fed),
    ]


def table(rows: list[tuple[str, float]], workers: int, baseline: float) -> str:
    lines = [
        "| pipeline | workers | img/s | img/s per core | vs DataLoader |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in rows:
        lines.append(f"| {name} | {workers} | {rate:.0f} | {rate / workers:.0f} | {rate / baseline:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=flags.positive_int, default=512)
    p.add_argument("--size", type=flags.size, default="500x400", help="W x H of the generated JPEGs")
    p.add_argument("--batch", type=flags.positive_int, default=64)
    p.add_argument("--steps", type=flags.positive_int, default=16, help="timed batches per pipeline")
    p.add_argument("--warmup", type=flags.non_negative_int, default=4, help="untimed first batches")
    p.add_argument("--workers", type=flags.positive_int, default=os.cpu_count() or 1)
    p.add_argument("--dir", default=None, help="reuse/keep the image folder here")
    p.add_argument("--docs", default=None, help="write the table to this markdown file")
    p.add_argument("--end-to-end", action="store_true", help="also train --model end to end (GPU)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--dtype", default="float32", help="compute dtype of --end-to-end (bfloat16)")
    args = p.parse_args(argv)
    w, h = args.size
    root = args.dir or tempfile.mkdtemp(prefix="rankax-input-")
    if not os.path.exists(os.path.join(root, "data.csv")):
        make_folder(root, args.images, (w, h))
    base, kind = dataloader_rate(root, args)
    auto = loader.resolve_workers(-1)
    rows = [
        (f"rankax, {args.workers} grain worker processes", rankax_rate(root, args, workers=args.workers)),
        (f"rankax, {args.workers} threads in the training process",
         rankax_rate(root, args, workers=0, threads=args.workers)),
        (f"rankax, {args.workers} grain processes, no draft decoding",
         rankax_rate(root, args, workers=args.workers, draft=False)),
        (f"DataLoader, {args.workers} workers ({kind}, float32)", base),
    ]
    best = "threads" if auto == 0 else "grain worker processes"
    host = f"{platform.node() or 'host'}, {machine.cpu_summary()}"
    text = (
        f"Input pipeline, {args.images} JPEGs {w}x{h}, batch {args.batch}, {args.steps} timed batches "
        f"after {args.warmup}; host: {host}. `config.input.workers=-1` (auto) uses {best} on this "
        f"host.\n\n" + table(rows, args.workers, base)
    )
    if args.end_to_end:
        import jax

        (name_a, a), (name_b, b) = end_to_end(root, args)
        device = jax.devices()[0].device_kind
        text += (
            f"\n\nEnd to end ({args.model}, {args.dtype}, batch {args.batch}, {device}, "
            f"jax {jax.__version__}):\n\n| path | img/s |\n|---|---:|\n| {name_a} | {a:.0f} |\n"
            f"| {name_b} | {b:.0f} |\n| fraction | {a / b:.0%} |"
        )
    print(text)
    if args.docs:
        with open(args.docs, "w") as f:
            command = shlex.join(sys.argv[1:] if argv is None else argv)
            f.write(f"# Input pipeline throughput\n\nWritten by `python -m experiments.benchmark_input "
                    f"{command}`.\n\n{text}\n")


if __name__ == "__main__":
    main()

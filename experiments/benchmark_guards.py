"""Cost of rankax's input guards and of the checked (checkify) mode, as ratios in one run.

For a few losses, ``jax.value_and_grad`` is timed in three forms, compiled once each and
measured alternately (best of ``--repeats``):

* ``bare``: the baseline without the guard: on ``lists`` the loss without its decorator
  (``loss.__wrapped__``); on ``batch`` the public loss through ``batch_loss`` compiled with the
  batch path's guard (``nonfinite.propagate_nonfinite``) replaced by the identity -- the same
  kernels, only the guard taken out (``__wrapped__`` there took the slower path of a user's own
  list function, not a guard-free one);
* ``guarded``: the public loss (``@listfn.list_function``: NaN propagation to values and gradients);
* ``checked``: ``rankax.debug.checked`` of the guarded function (checkify value checks).

on two workloads: ``batch`` -- ``rankax.batch_loss`` on a P x K batch (the batch path guards
the embeddings once, ``O(B D)``, and skips the per-list guard), and ``lists`` -- the loss
called directly on ``[B, B]`` score lists with a dense mask (the per-list guard, ``O(B N)``,
next to the loss's ``O(B C N)``). Prints ``guarded / bare`` and ``checked / bare``. Usage::

    python -m experiments.benchmark_guards --batch 2048 --dim 128
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time

import jax
import jax.numpy as jnp

import rankax
from experiments import flags
from rankax._core import nonfinite

K = 4
LOSSES = ("supap_loss", "smooth_ap_loss", "pnp_loss")


@contextlib.contextmanager
def _without_batch_guard():
    """While tracing: ``batch_loss``'s non-finite guard is the identity (the guard-free baseline
    of the ``batch`` workload). JAX's caches are emptied on the way out, so that no later trace
    reuses the guard-free one."""
    guard = nonfinite.propagate_nonfinite
    nonfinite.propagate_nonfinite = lambda out, bad: out
    try:
        yield
    finally:
        nonfinite.propagate_nonfinite = guard
        jax.clear_caches()


def _bare(step, loss_fn, workload: str, inputs) -> object:
    """The compiled guard-free form of ``step`` (module doc)."""
    if workload == "lists":
        return jax.jit(functools.partial(step, fn=loss_fn.__wrapped__)).lower(*inputs).compile()
    with _without_batch_guard():
        return jax.jit(step).lower(*inputs).compile()


def _best(fn, args, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=flags.multiple(K), default=2048, help=f"a multiple of K = {K}")
    parser.add_argument("--dim", type=flags.positive_int, default=128)
    parser.add_argument("--repeats", type=flags.positive_int, default=5)
    args = parser.parse_args(argv)

    emb = jax.random.normal(jax.random.key(0), (args.batch, args.dim))
    emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
    labels = jnp.repeat(jnp.arange(args.batch // K, dtype=jnp.int32), K)
    print(f"{jax.devices()[0].device_kind}, B={args.batch} D={args.dim} K={K}, best of {args.repeats}")
    scores = emb @ emb.T
    rel = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    where = ~jnp.eye(args.batch, dtype=bool)
    for name in LOSSES:
        loss_fn = getattr(rankax.losses, name)

        def batch(e, y, fn=loss_fn):
            return jax.value_and_grad(
                lambda e: rankax.batch_loss(fn, e, y, max_positives=K - 1, capacity_limit=K - 1)
            )(e)

        def lists(s, y, fn=loss_fn):
            return jax.value_and_grad(lambda s: fn(s, y, where=where, max_positives=K - 1))(s)

        for workload, step, inputs in (("batch", batch, (emb, labels)), ("lists", lists, (scores, rel))):
            forms = {
                "bare": _bare(step, loss_fn, workload, inputs),
                "guarded": jax.jit(step),
                "checked": rankax.debug.checked(step),
            }
            for fn in forms.values():  # compile and warm up
                jax.block_until_ready(fn(*inputs))
            times = {key: float("inf") for key in forms}
            for _ in range(args.repeats):  # alternate so drifts in machine load hit all forms
                for key, fn in forms.items():
                    times[key] = min(times[key], _best(fn, inputs, 1))
            print(
                f"{name:15s} {workload:6s} bare {times['bare'] * 1e3:7.1f} ms   guarded / bare = "
                f"{times['guarded'] / times['bare']:.3f}   checked / bare = "
                f"{times['checked'] / times['bare']:.3f}"
            )


if __name__ == "__main__":
    main()

"""List-level rank losses: ``fn(scores, labels, *, where=None, reduce_fn=jnp.mean, ...)``."""

from rankax.losses.ap import smooth_ap_loss, supap_loss

__all__ = ["smooth_ap_loss", "supap_loss"]

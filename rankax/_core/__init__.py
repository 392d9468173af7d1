"""The machinery shared by every list-level loss and metric, one job per module.

* :mod:`~rankax._core.validation` -- argument checks and their error messages (every message
  starts with the name of the public function, passed in as ``caller``).
* :mod:`~rankax._core.nonfinite` -- NaN/inf inputs give NaN values and NaN gradients.
* :mod:`~rankax._core.positives` -- gathering each list's positives into static slots (the
  capacity ladder), and the per-list reductions.
* :mod:`~rankax._core.listfn` -- the checked public wrapper of a list function and the
  validated :class:`~rankax._core.listfn.Lists` its unchecked kernel receives.
* :mod:`~rankax._core.stats` -- the additive per-list statistics the batch path sums.
* :mod:`~rankax._core.normalize` -- L2 normalisation of embedding rows (device and host).
"""

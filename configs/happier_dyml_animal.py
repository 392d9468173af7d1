"""HAPPIER on DyML-Animal (the SupRank README's "DyML-Animal" run, ``HAPPIER_dyml_animal``).

The README command is the DyML-Vehicle one with ``dataset=dyml_animal loss=HAPPIER_5``; this
config is ``configs/happier_dyml_vehicle.py`` (see its docstring for the official files,
the proxies' optimizer and the deviations) with those two changes:
``suprank/config/dataset/dyml_animal.yaml`` (same sampler and transforms, the ``dyml_animal``
folder) and ``suprank/config/loss/HAPPIER_5.yaml`` (weights 0.5 / 0.5 instead of 0.9 / 0.1,
ClusterLoss temperature 0.05).

Data: ``--config.dataset.root=/path/to/dyml_animal``. Reported numbers: the HAPPIER/SupRank
tables were not consulted, ``reported`` holds None.
"""

from configs import happier_dyml_vehicle


def get_config():
    return happier_dyml_vehicle.get_config(variant="animal", weights=(0.5, 0.5))

"""``experiments.train`` with a fault on one process, run through ``cli.run`` as the real
command is: ``python -m tests.multihost_fail <train flags>`` with ``RANKAX_TEST_FAULT``:

* ``read:<process>:<step>``: an ImageReadError at that step (a missing image on one host);
* ``data:<process>``: that process's training labels differ in one item (another CSV there);
* ``params:<process>``: that process's initial parameters differ (other pretrained weights);
* ``unreadable:<process>:<step>``: that checkpoint fails its checksum on that process alone
  (its host's copy or cache of the files differs).
"""

import dataclasses
import os
import sys

import jax
import numpy as np

from experiments import cli, train
from rankax.data.base import ArraySource
from rankax.train import checkpointing, input_pipeline, state

KIND, PROCESS, *REST = os.environ["RANKAX_TEST_FAULT"].split(":")
PROCESS = int(PROCESS)
_batches, _load, _initial = input_pipeline.train_batches, input_pipeline.load, state.initial_state
_read = checkpointing.Checkpointer._read


def _failing_batches(config, data, sampler, start, stop):
    from rankax.data import ImageReadError

    for item in _batches(config, data, sampler, start, stop):
        if jax.process_index() == PROCESS and item[0] == int(REST[0]):
            raise ImageReadError(f"cannot read image 7 (injected on process {PROCESS} at step {REST[0]})")
        yield item


def _other_data(config):
    data = _load(config)
    if jax.process_index() != PROCESS:
        return data
    labels = np.array(data.train.labels, copy=True)
    labels[0] = labels[1]
    return dataclasses.replace(data, train=ArraySource(data.train.images, labels))


def _other_params(*args, **kwargs):
    initial = _initial(*args, **kwargs)
    if jax.process_index() != PROCESS:
        return initial
    return initial.replace(params=jax.tree.map(lambda x: x * 1.5, initial.params))


def _unreadable_here(self, template, step):
    restored = _read(self, template, step)  # orbax's collective read happens on every process
    if jax.process_index() == PROCESS and step == int(REST[0]):
        raise ValueError(f"injected: the data of step {step} differ from their checksum on process {PROCESS}")
    return restored


if __name__ == "__main__":
    if KIND == "read":
        input_pipeline.train_batches = _failing_batches
    elif KIND == "data":
        input_pipeline.load = _other_data
    elif KIND == "params":
        state.initial_state = _other_params
    elif KIND == "unreadable":
        checkpointing.Checkpointer._read = _unreadable_here
    cli.run(lambda: train.main(sys.argv[1:]))

"""Train and evaluate a rankax experiment.

    python -m experiments.train --config configs/digits.py --workdir runs/digits \
        [--config.num_steps=50 ...]

Running the same command on a workdir that holds checkpoints resumes from the latest one.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from rankax.train import train_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.json and plots.")
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
    train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)

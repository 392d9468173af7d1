"""The training system: ``train_lib.train_and_evaluate(config, workdir)``."""

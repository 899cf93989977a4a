"""Experiments: k-fold cross-validation, variant comparison with paired statistics, the
cross-centre protocol, and a local (optuna) runner for W&B sweep files.

Runners start every fold / trial as a LightningCLI subprocess (``python -m
bus_mtl.cli.main fit|test ...``) and read its results through
:class:`~bus_mtl.experiments.callbacks.RunRecorder`.
"""

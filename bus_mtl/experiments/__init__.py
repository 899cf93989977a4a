"""Experiments: k-fold cross-validation, variant comparison with paired statistics, the
cross-centre protocol, and a local (optuna) runner for W&B sweep files.

* ``cv`` / ``compare`` build each fold with the LightningCLI builder the CLI layer hands
  them (``build_cli(args, run=False)``, then ``trainer.fit`` / ``trainer.test``: the path of
  ``bus-mtl main``), in this process, one fold after another; only ``--parallel N > 1``
  runs folds as subprocesses (``python -m bus_mtl.experiments.cv OUT/fold_k/job.json``).
  Results are read from each fold's own files (``run.json``, ``metrics.json``,
  ``test_predictions.csv``); see :mod:`bus_mtl.experiments.cv`.
* ``cv`` / ``compare`` draw their one ``split.json`` with the data module's
  :func:`~bus_mtl.data.splits.make_split`, the tuning hold-out included;
  :mod:`bus_mtl.experiments.tuning` holds what the runners record and check about that
  hold-out (``tuning.json``, ``--tuned-by``, ``--final``).
* The sweep runner starts every trial as the sweep file's own ``command`` (a subprocess,
  exactly as a W&B agent would) and reads its results through
  :class:`~bus_mtl.experiments.callbacks.RunRecorder`.
"""

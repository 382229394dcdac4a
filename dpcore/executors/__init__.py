"""Where an experiment's runs execute: ``local`` (this machine, ``run.jobs`` runs at once, each in its own process
when there are several: :mod:`.local`) or ``ray`` (one Ray task per run on a cluster, results streamed back into
this machine's run store: :mod:`.ray`). Both run the same engine tasks (:mod:`dpcore.engine.tasks`), and both
claim each run in the store before it starts. :class:`dpcore.experiment.Experiment` picks the executor."""

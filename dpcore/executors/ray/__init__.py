"""The Ray executor (:mod:`.cluster`, :mod:`.worker`, :mod:`.driver`): one Ray task per run, on any node of a
cluster, running the same engine as a local run.

The driver (the machine that launched the experiment) owns the run store. Nothing assumes a shared filesystem:

* **Shared stages first, once per cache key.** A dense baseline (per seed) and a distilled set (per source)
  that the driver's cache lacks is made by one stage task; its cache files come back and are written into
  the driver's cache; runs that need it start only then, with those files. MTT sources run their stages one
  after another, so a later one reuses the expert trajectories of an earlier one.
* **Each run** gets its own store files (the finished rounds: a resumed run goes on after its last one) and
  the cache files it needs, runs in a private folder on its node, and streams back, as a Ray generator:
  where it runs, every engine event (appended to ``events.jsonl`` here, and shown live), and every file it
  writes (round files, masks, ``results.json``, sink logs), each written here atomically.
* **Faults**: a task lost with its node or worker process is submitted again (``run.ray_retries`` times) and
  resumes from what reached the driver's store; with ``run.threads`` set its results equal an uninterrupted
  run's. A run that raises fails alone. A driver restarted after a crash resumes its unfinished runs.
* **Cancel**: a small actor on the driver's node holds the cancelled run ids; each run polls it and stops
  after the current step, as a local run does on Ctrl-C.

With ``run.ray_shared_store`` (the store is on a filesystem every node mounts at the same path), workers
write straight into it and only events travel.
"""

from .cluster import ClusterStatus, cluster_status, connect
from .driver import run_on_ray

__all__ = ["ClusterStatus", "cluster_status", "connect", "run_on_ray"]

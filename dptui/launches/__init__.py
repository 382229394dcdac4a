"""The launch queue: runs started as detached OS processes, queued per device slot, without any UI.

- :mod:`.launcher` writes a launch's folder, starts its queue runner, cancels, resumes and reads the records;
- :mod:`.runner` is the detached queue runner itself (``python -m dptui.launches.runner LAUNCH_DIR``);
- :mod:`.logs` reads the end of a run's log.

Plain Python: the dashboard (:mod:`dptui.app`) reads these records; nothing here imports it or Textual.
"""

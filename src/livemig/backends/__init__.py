"""Backends: how livemig's core reaches a pair of hypervisors.

Each backend implements :class:`livemig.core.backend.Backend`:

* :mod:`livemig.backends.qemu` -- two QEMU processes over QMP (VMs that livemig started
  or adopted, or a pair that another program started: ``migrate --src-qmp/--dst-qmp``).
"""

"""Imported once, by the local executor's fork server (``WORKER_PRELOAD``), and by nothing else.

The server asks Linux to SIGKILL it when the runner that started it dies, even by ``kill -9``;
each worker forked from it asks the same of the server (``local._die_with_parent``). So the
runner's death takes the server and every worker down: no orphan keeps training a cell.
"""

from __future__ import annotations

import sys

if sys.argv[:1] == ["-c"] and "multiprocessing.forkserver" in sys.modules:  # the server process itself
    from .local import _die_with_parent

    _die_with_parent()

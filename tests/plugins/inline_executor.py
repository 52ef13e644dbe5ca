"""A plugin executor (``--plugin`` or the entry-point group ``adaptbench.executors``): every
cell runs in the driver's own process, one after another."""

from __future__ import annotations

from adaptbench.registry import register_executor
from adaptbench.runner.executors import Executor
from adaptbench.runner.jobs import execute_cell


class InlineExecutor(Executor):
    """Cells in the driver's process, one at a time (a test plugin)."""

    reuses_workers = True  # the driver's process runs cell after cell

    def __init__(self, settings=None):
        super().__init__(settings)
        self.queue = []

    @property
    def pending(self) -> int:
        return len(self.queue)

    def submit(self, job) -> None:
        self.queue.append(job)

    def as_completed(self, on_event, timeout=None):
        while self.queue:
            yield self.finish(self.queue.pop(0), on_event)

    def finish(self, job, on_event):
        """Run ``job`` to its outcome (tests replace this with a script)."""
        return execute_cell(job, on_event)


register_executor("inline", InlineExecutor)

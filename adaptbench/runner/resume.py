"""Resume checkpoints: a cell killed mid-training (preempted, OOM-killed, its node lost)
continues from its last finished epoch and ends with the metrics of an uninterrupted run.

**Why.** A matrix on preemptible machines loses whole cells to every preemption; a long cell
(100 epochs of a large backbone) may never finish. With ``RunPlace.resume`` a cell keeps one
checkpoint of its training state while it trains, and the next run of the same cell (same cell
id: same config and code versions) starts from it.

**How.** :class:`ResumeCheckpoint` is a Lightning checkpoint callback (the runner gives it to
the ``Trainer``; it needs nothing of the LightningModule):

* at the end of every training epoch but the last, after the module's own epoch-end hook (the
  non-finite-loss check: a checkpoint never holds a state after a NaN loss), it writes
  ``<store>/.resume/<cell id>/last.ckpt`` with ``trainer.save_checkpoint`` into
  ``ResultStore.local_copy_to``: a temporary file renamed into place (or one ``put`` to an
  fsspec URL), so a kill mid-write leaves the previous checkpoint intact. The last epoch is not
  saved: nothing of training would be left to resume, and Lightning keeps no training metrics
  in a checkpoint, so a cell killed while evaluating re-trains its last epoch instead.
* The checkpoint is Lightning's: loop progress, optimiser and LR-scheduler states, and the
  module's ``state_dict`` **filtered to what training changes** (:func:`resume_keys`): every
  parameter that trains (the adapter's declared tensors, the head's), the head's tensors an
  adapter checkpoint keeps (``head_checkpoint_state``), and any other parameter or buffer that
  is not the frozen backbone's (an adapter's non-trained parameters or buffers). The frozen
  backbone -- its sealed parameters and the buffers of the modules that own them -- is never in
  it: the next run rebuilds it from its weights exactly as this one did. The hyper-parameters
  are dropped too (the module is rebuilt from the run's config).
* Beside them, under ``"adaptbench_resume"``: the format, the cell id, the epochs done, the
  kept keys, and the random states that Lightning does not save: torch's (CPU and CUDA),
  numpy's and Python's global generators, and the generator that orders the training split's
  batches epoch after epoch (``SplitBatches``; a ``DataLoader``'s ``generator``), so the epoch
  after a resume draws the same batch order, dropout and drop-path masks as it would have.
  The batch-order generator is restored before the first epoch after the resume draws it
  (``on_train_start``), the global ones at its first batch (after any adapter's
  ``on_train_start``), the same point of the random streams as where they were saved.
* At start (:meth:`ResumeCheckpoint.restoring`), an existing checkpoint is copied to a local
  file when the store is a URL, read with ``torch.load(weights_only=True)`` -- torch's
  restricted unpickler, which builds tensors and plain containers and runs no code from the
  file -- and checked: its format and cell id, epochs left to train, and its keys equal to
  :func:`resume_keys` of the module now built, with the same shapes (every saved key is loaded;
  every key not saved is a frozen one). A checkpoint that fails any check is ignored with a
  warning and the cell trains from its start (it is overwritten at its first epoch's end).
  Then ``trainer.fit(..., ckpt_path=<it>, weights_only=True)`` restores it through the same
  unpickler, with the module's ``strict_loading`` off for that call (the frozen keys are
  missing on purpose; the check above is the strict one).

What is written where: the run record stays JSON and the adapter result checkpoint
safetensors (``store.py``); the resume checkpoint is Lightning's format (a torch zip
pickle), read only with the weights-only unpickler, and deleted (:func:`discard`) once the
cell's success record is written. A cell that fails (an exception: NaN loss, out of memory, an
unreadable file) keeps its checkpoint, from its last good epoch, and a retry of that cell
resumes from it: a transient failure then costs at most one epoch, and a deterministic one
fails again at the same point, sooner. ``resume=False`` (``adaptbench train``'s default)
neither writes nor reads one.

Exactness: on the CPU (deterministic) a resumed cell's metrics equal an uninterrupted run's
(``tests/test_resume.py``). State an adapter keeps outside its tensors and outside the random
generators (``peft:adalora``'s importance scores, held by its rank allocator) starts afresh
after a resume: such a cell resumes, but not bit for bit.
"""

from __future__ import annotations

import os
import random
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from .store import ResultStore

FORMAT = "adaptbench.resume"
FORMAT_VERSION = 1
KEY = "adaptbench_resume"  # our part of the checkpoint dict
FILE = "last.ckpt"
_DROPPED = ("hyper_parameters", "hparams_name", "hparams_type", "datamodule_hyper_parameters")


def checkpoint_location(store: ResultStore, run_id: str) -> str:
    """Where the resume checkpoint of cell ``run_id`` lives (a path or a URL)."""
    folder = store.resume_location(run_id)
    return f"{folder}/{FILE}" if not store.is_local else str(Path(folder, FILE))


def discard(store: ResultStore | str | os.PathLike, run_id: str) -> None:
    """Delete cell ``run_id``'s resume checkpoint (after its success record is written)."""
    store = ResultStore.at(store)
    store.remove(store.resume_location(run_id), recursive=True)


# -- what is kept --------------------------------------------------------------------------------
def resume_keys(module: torch.nn.Module) -> set[str]:
    """The keys of ``module.state_dict()`` a resume checkpoint keeps (see the module docstring).

    Frozen, and left out: the backbone's sealed parameters, the buffers of the modules that own
    one, and the head's tensors under its ``frozen_prefixes``. A module without a sealed
    backbone (a plugin's) counts every parameter that does not train as frozen.
    """
    backbone = getattr(module, "backbone", None)
    sealed_of = getattr(backbone, "sealed_parameters", None)
    params = dict(module.named_parameters(remove_duplicate=False))
    if sealed_of is not None:
        sealed = {id(param) for param in sealed_of()}
    else:
        sealed = {id(param) for param in params.values() if not param.requires_grad}
    head = getattr(module, "head", None)
    head_kept = None
    if isinstance(head, torch.nn.Module):
        from ..tasks.heads import head_checkpoint_state

        head_kept = {f"head.{key}" for key in head_checkpoint_state(head)}
    owners = dict(module.named_modules(remove_duplicate=False))
    kept = set()
    for key in module.state_dict():
        param = params.get(key)
        if param is not None and param.requires_grad:
            kept.add(key)
        elif param is not None and id(param) in sealed:
            continue  # the frozen backbone's (under the head too, when a head shares its modules)
        elif head_kept is not None and key.startswith("head."):
            if key in head_kept:
                kept.add(key)
        elif param is not None:
            kept.add(key)  # an adapter's parameter that does not train (a rank budget, a mask)
        else:  # a buffer: frozen when its module owns a sealed parameter
            owner = owners.get(key.rpartition(".")[0], module)
            if not any(id(own) in sealed for own in owner.parameters(recurse=False)):
                kept.add(key)
    return kept


# -- random states -------------------------------------------------------------------------------
def random_states() -> dict[str, Any]:
    """The global generators' states, as tensors and plain values (weights-only loadable)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    version, python_state, python_gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)],
        "python": [version, list(python_state), python_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, python_state, python_gauss = states["python"]
    random.setstate((version, tuple(python_state), python_gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def order_generator(batches: Any) -> torch.Generator | None:
    """The generator that draws a training loader's batch order each epoch: a ``SplitBatches``'s
    seeded ``DataLoader`` (``tasks/batches.py``), or a ``DataLoader``'s (or its sampler's)."""
    for holder in (getattr(batches, "_order", None), batches):
        for candidate in (getattr(holder, "generator", None),
                          getattr(getattr(holder, "sampler", None), "generator", None)):
            if isinstance(candidate, torch.Generator):
                return candidate
    return None


# -- the callback --------------------------------------------------------------------------------
class ResumeCheckpoint(Checkpoint):
    """Saves a cell's resume checkpoint after each epoch and restores what Lightning does not
    (see the module docstring). ``resumed_from_epoch``: the epochs the checkpoint a run started
    from had finished (None: it started from scratch)."""

    def __init__(self, store: ResultStore | str | os.PathLike, run_id: str):
        self.store = ResultStore.at(store)
        self.run_id = run_id
        self.location = checkpoint_location(self.store, run_id)
        self.resumed_from_epoch: int | None = None
        self._order_state: torch.Tensor | None = None
        self._random_states: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return f"{type(self).__name__}[{self.run_id}]"

    # -- saving ------------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epochs_done = trainer.current_epoch + 1  # "completed" is counted after this hook
        if trainer.max_epochs is not None and epochs_done >= trainer.max_epochs:
            return  # the last epoch: nothing to resume (see the module docstring)
        with self.store.local_copy_to(self.location) as temporary:
            trainer.save_checkpoint(temporary)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        kept = resume_keys(pl_module)
        checkpoint["state_dict"] = {key: value for key, value in checkpoint["state_dict"].items() if key in kept}
        for key in _DROPPED:
            checkpoint.pop(key, None)
        generator = order_generator(trainer.train_dataloader)
        checkpoint[KEY] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "run_id": self.run_id,
            "epochs_done": trainer.current_epoch + 1, "max_epochs": trainer.max_epochs,
            "keys": sorted(checkpoint["state_dict"]), "random": random_states(),
            "order": generator.get_state() if generator is not None else None,
        }

    # -- restoring ---------------------------------------------------------------------------------
    @contextmanager
    def restoring(self, module: torch.nn.Module, max_epochs: int) -> Iterator[str | None]:
        """The local path of a checkpoint that fits ``module`` (None: train from the start), to
        pass to ``trainer.fit(ckpt_path=..., weights_only=True)`` inside the block; while in it
        the module loads non-strictly (the frozen keys are missing on purpose)."""
        with ExitStack() as stack:
            path = self._local_checkpoint(stack)
            if path is None or self.check(path, module, max_epochs) is None:
                yield None
                return
            strict = module.strict_loading
            module.strict_loading = False
            try:
                yield str(path)
            finally:
                module.strict_loading = strict

    def _local_checkpoint(self, stack: ExitStack) -> Path | None:
        """The checkpoint as a local file (a remote store's is copied into a temporary folder
        that ``stack`` removes; a local one is used where it is, so a worker killed while
        training leaves no folder behind)."""
        if self.store.is_local:
            path = Path(self.location)
            return path if path.is_file() else None
        data = self.store.read_bytes(self.location)
        if data is None:
            return None
        path = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="adaptbench-resume-"))) / FILE
        path.write_bytes(data)
        return path

    def check(self, path: str | Path, module: torch.nn.Module, max_epochs: int) -> int | None:
        """The epochs done of the checkpoint at ``path`` when it fits this cell and ``module``;
        None (with a warning) when it does not."""
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            problem = _misfit(checkpoint, self.run_id, module, max_epochs)
        except Exception as err:  # noqa: BLE001 - unreadable, refused by the unpickler, malformed
            problem = f"cannot be read ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
        if problem is not None:
            warnings.warn(f"resume checkpoint {self.location} {problem}; training cell {self.run_id} "
                          f"from its start", stacklevel=2)
            return None
        return int(checkpoint[KEY]["epochs_done"])

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        ours = checkpoint[KEY]
        self.resumed_from_epoch = int(ours["epochs_done"])
        self._order_state = ours.get("order")
        self._random_states = ours["random"]

    def on_train_start(self, trainer, pl_module) -> None:
        if self._order_state is not None:
            generator = order_generator(trainer.train_dataloader)
            if generator is None:
                raise RuntimeError(f"resume checkpoint {self.location} holds a batch order, but the "
                                   f"training loader has no generator to restore it to")
            generator.set_state(self._order_state)
            self._order_state = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._random_states is not None:
            set_random_states(self._random_states)
            self._random_states = None


def _misfit(checkpoint: Any, run_id: str, module: torch.nn.Module, max_epochs: int) -> str | None:
    """Why a loaded checkpoint cannot resume cell ``run_id`` with ``module`` (None: it can)."""
    ours = checkpoint.get(KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(ours, dict) or ours.get("format") != FORMAT:
        return "is not an adaptbench resume checkpoint"
    if ours.get("format_version") != FORMAT_VERSION:
        return f"has format version {ours.get('format_version')!r}, this adaptbench reads {FORMAT_VERSION}"
    if ours.get("run_id") != run_id:
        return f"belongs to cell {ours.get('run_id')!r}"
    if not 0 < int(ours.get("epochs_done", 0)) < max_epochs:
        return f"has {ours.get('epochs_done')} epochs done of the cell's {max_epochs}"
    saved = checkpoint.get("state_dict")
    if not isinstance(saved, dict):
        return "has no state_dict"
    expected = resume_keys(module)
    missing, unexpected = sorted(expected - set(saved)), sorted(set(saved) - expected)
    if missing or unexpected:
        return (f"does not fit the module: missing {missing[:3]}, unexpected {unexpected[:3]} "
                f"(a saved key must be a trained one, a key not saved a frozen one)")
    state = module.state_dict()
    for key, value in saved.items():
        if not isinstance(value, torch.Tensor) or value.shape != state[key].shape:
            return f"has {key!r} of shape {tuple(getattr(value, 'shape', ()))}, the module {tuple(state[key].shape)}"
    return None

"""Checkpoints: an orbax CheckpointManager wrapper that does nothing without a directory.

Each checkpoint holds the ``TrainState`` pytree and, as JSON, the data
position (``next_batch``: the index of the next micro-batch to read) with the
seed and example count it refers to, so a resumed run reads the same batches
an uninterrupted one would. Saves are synchronous: checkpoints here are small,
and a run event may only announce a checkpoint (with its sha256) once it is
complete on disk.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from trainer.train import TrainState


class Checkpointer:
    """``save`` / ``restore_latest`` under ``directory``; both are no-ops when it is None."""

    def __init__(self, directory: Path | str | None, *, max_to_keep: int = 3) -> None:
        self.directory = None if directory is None else Path(directory).absolute()
        self._manager = None
        if self.directory is not None:
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
                ),
            )

    def save(self, step: int, state: TrainState, data: dict[str, Any] | None = None) -> Path | None:
        """Save ``state`` (and the JSON-able ``data`` position) as checkpoint ``step``.

        Returns the checkpoint's folder, or None without a directory.
        """
        if self._manager is None:
            return None
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data or {})
            ),
            force=True,
        )
        self._manager.wait_until_finished()
        return self.path(step)

    def path(self, step: int) -> Path:
        assert self.directory is not None
        return self.directory / str(step)

    def latest_step(self) -> int | None:
        return None if self._manager is None else self._manager.latest_step()

    def restore_latest(self, like: TrainState) -> tuple[int, TrainState, dict[str, Any]] | None:
        """``(step, state, data)`` of the newest checkpoint, or None if there is none.

        ``like`` is a state of the right structure (e.g. a freshly initialised
        one); only its shapes and dtypes are used.
        """
        step = self.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
            ),
        )
        return step, TrainState(*restored["state"]), dict(restored["data"] or {})

    def close(self) -> None:
        """Idempotent; ``save`` does nothing afterwards."""
        if self._manager is not None:
            self._manager.close()
            self._manager = None


def sha256_dir(path: Path | str) -> str:
    """sha256 over every file under ``path``: relative POSIX path, NUL, size, NUL, bytes.

    Files are taken in sorted path order, so the digest depends on content only.
    """
    root = Path(path)
    sha = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix().encode("utf-8")
        data = file.read_bytes()
        sha.update(rel + b"\0" + str(len(data)).encode() + b"\0")
        sha.update(data)
    return sha.hexdigest()

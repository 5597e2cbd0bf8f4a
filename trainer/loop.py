"""The training loop: ``Session`` is one process's share of a run, ``train_and_evaluate`` runs one alone.

There is one loop. A run's processes (this one alone, or one per Ray actor
joined by ``trainer.mesh.join``) each hold a ``Session`` on the run's mesh
and call ``step`` together: one jitted step over the global batch, whose
gradient all-reduce XLA performs between the processes.
``trainer.distributed`` only starts the actors and relays their metrics.

Resume on construction: if ``workdir`` holds a checkpoint, the run continues
from it (state and data position) and gives the same loss curve as a run
that was never interrupted. Hooks are the extension points: the run-event
publisher passes ``on_metrics`` / ``on_checkpoint``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.checkpoint import Checkpointer, sha256_dir
from trainer.config import (
    BaseModelConfig,
    ConfigError,
    LoraConfig,
    ModelConfig,
    Preset,
    TrainConfig,
)
from trainer.data import Example, tokenize_counted
from trainer.evaluate import evaluate
from trainer.lm import build_lm
from trainer.mesh import (
    global_batch,
    is_primary,
    layout,
    needs_fsdp,
    place,
    run_mesh,
    time_all_reduce,
    to_host,
)
from trainer.train import TrainState, batch_indices, make_train_fns

MetricsHook = Callable[[dict[str, Any]], None]
CheckpointHook = Callable[[int, Path, str], None]
StartedHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Result:
    """What a run ended with."""

    step: int  # optimizer updates done in total
    state: TrainState | None  # the final state; None from Ray actors (the driver holds no weights: read the checkpoint)
    history: list[dict[str, Any]] = field(repr=False)  # metrics of the micro-steps run here
    scorecard: dict[str, Any]
    resumed_from: int | None  # checkpoint step the run continued from, if any
    checkpoint: Path | None  # the last checkpoint's folder
    checkpoint_sha256: str | None
    outputs: list[dict[str, str]] = field(default_factory=list)  # trainer.export.Output.as_dict() of each export


TRUNCATION_RULE = ("prompt cut from the left first; a completion longer than max_len alone: "
                   "prompt dropped, completion cut from the right")


def truncation_card(train: int, eval_: int, max_len: int) -> dict[str, Any]:
    """The scorecard's ``truncated``: examples longer than ``max_len`` tokens, per split, and the rule."""
    return {"train": int(train), "eval": int(eval_), "max_len": int(max_len), "rule": TRUNCATION_RULE}


def export_outputs(lm: Any, params: Any, workdir: Path | str | None) -> list[dict[str, str]]:
    """A base model run's outputs under ``workdir / "export"`` (``trainer.export``): under LoRA the adapter and
    the merged model, else the fine-tuned model; [] for the byte model or without a workdir."""
    if workdir is None or lm.info.get("kind") != "base":
        return []
    from trainer.export import export_lora, export_model

    export = export_lora if lm.info.get("lora") else export_model
    return [o.as_dict() for o in export(lm, params, Path(workdir) / "export")]


def checkpointer(workdir: Path | str | None) -> Checkpointer:
    """The run's checkpointer: ``workdir / "checkpoints"``, or one that does nothing."""
    return Checkpointer(None if workdir is None else Path(workdir) / "checkpoints")


def data_identity(n_examples: int, train_cfg: TrainConfig) -> dict[str, int]:
    """What a checkpoint's data position refers to; a resumed run must have the same."""
    return {"examples": n_examples, "seed": train_cfg.seed}


def checkpoint_due(micro: int, train_cfg: TrainConfig) -> bool:
    """After micro-batch ``micro``: an update just finished, and it is every K-th or the last."""
    update, rest = divmod(micro, train_cfg.grad_accum_steps)
    return rest == 0 and (update % train_cfg.checkpoint_every == 0 or update == train_cfg.total_steps)


def restore(ckpt: Checkpointer, state: TrainState, data_id: dict[str, int]) -> tuple[int | None, TrainState]:
    """``(checkpoint step, state)`` from the newest checkpoint, or ``(None, state)`` without one.

    Raises:
        ConfigError: the checkpoint was written for other data (its position would be wrong).
    """
    restored = ckpt.restore_latest(state)
    if restored is None:
        return None, state
    step, state, data = restored
    if {k: data.get(k) for k in data_id} != data_id or data.get("next_batch") != int(state.step):
        raise ConfigError(
            f"checkpoint {ckpt.path(step)} was written for data {data}, this run "
            f"has {data_id}; use a fresh workdir for a different data set or seed"
        )
    return step, state


Checkpoint = tuple[int, Path, str | None]
"""(optimizer update, folder, sha256 — computed by the primary process only)."""


class Session:
    """One process's share of a run: the model, its tokenized data, the state laid out on the run's mesh.

    Every process of a run builds one with the same arguments and calls
    ``step`` the same number of times, then ``finish``; each of these is a
    collective. Checkpoints (Orbax) are written by all processes together,
    hashed, evaluated and exported by the primary one.

    Raises (on construction):
        ConfigError: no training examples, or the checkpoint was written for
            a different data set size or seed (its data position would be wrong).
        CheckpointError: the base model directory is unusable.
    """

    def __init__(self, preset: Preset, train_examples: Sequence[Example], eval_examples: Sequence[Example],
                 workdir: Path | str | None) -> None:
        import jax

        if not train_examples:
            raise ConfigError("a training run needs at least one training example")
        self.preset, self.cfg = preset, preset.train
        self.train_examples, self.eval_examples = train_examples, eval_examples
        lm = build_lm(preset)
        self.mesh = run_mesh()
        fns = make_train_fns(lm.apply, self.cfg)
        self.arrays, self.truncated = tokenize_counted(train_examples, lm.max_len, lm.tokenizer)
        state = fns.init(lm.params)
        self.fsdp = needs_fsdp(self.cfg.fsdp, self.mesh, state, lm.params, lm.frozen)
        state_layout = layout(state, self.mesh, self.fsdp)
        self.state = place(state, state_layout)
        frozen = None if lm.frozen is None else place(lm.frozen, layout(lm.frozen, self.mesh, self.fsdp))
        self.lm = dataclasses.replace(lm, frozen=frozen)  # the process keeps one copy of the frozen weights
        self._train_step = jax.jit(fns.train_step, out_shardings=(state_layout, None))
        self.workdir = workdir
        self.ckpt = checkpointer(workdir)
        self.data_id = data_identity(len(train_examples), self.cfg)
        self.checkpoint: Checkpoint | None = None
        try:
            self.resumed_from, self.state = restore(self.ckpt, self.state, self.data_id)
        except BaseException:
            self.ckpt.close()
            raise
        if self.resumed_from is not None:
            path = self.ckpt.path(self.resumed_from)
            self.checkpoint = (self.resumed_from, path, sha256_dir(path) if is_primary() else None)
        self.micro = int(self.state.step)

    @property
    def total_micro_steps(self) -> int:
        return self.cfg.total_steps * self.cfg.grad_accum_steps

    @property
    def done(self) -> bool:
        return self.micro >= self.total_micro_steps

    def started_info(self) -> dict[str, Any]:
        """What ``on_started`` and the ``started`` event report."""
        return {"examples": len(self.train_examples), "truncated": self.truncated, "max_len": self.lm.max_len,
                **self.lm.info}

    def step(self) -> tuple[dict[str, Any], Checkpoint | None]:
        """Micro-step ``self.micro`` on the global batch, then the checkpoint if one is due.

        Returns ``({step, micro_step, loss, grad_norm, learning_rate, tokens, truncated}, the new checkpoint)``.
        """
        batch = global_batch(self.arrays, batch_indices(len(self.train_examples), self.cfg.batch_size,
                                                         self.cfg.seed, self.micro), self.mesh)
        self.state, m = self._train_step(self.state, batch, self.lm.frozen)
        self.micro += 1
        update = self.micro // self.cfg.grad_accum_steps
        metrics = {"step": update, "micro_step": self.micro, **{n: float(v) for n, v in m.items()},
                   "truncated": self.truncated}
        saved = None
        if checkpoint_due(self.micro, self.cfg):
            path = self.ckpt.save(update, self.state, {**self.data_id, "next_batch": self.micro})
            if path is not None:
                saved = self.checkpoint = (update, path, sha256_dir(path) if is_primary() else None)
        return metrics, saved

    def finish(self) -> tuple[list[dict[str, str]], dict[str, Any]]:
        """Close the checkpoints; the primary exports and evaluates. ``(outputs, scorecard)``; ``([], {})`` elsewhere."""
        self.ckpt.close()
        params = to_host(self.state.params)
        frozen = None if self.lm.frozen is None else to_host(self.lm.frozen)
        if not is_primary():
            return [], {}
        lm = dataclasses.replace(self.lm, frozen=frozen)
        outputs = export_outputs(lm, params, self.workdir)
        scorecard = evaluate(lm.apply, params, self.eval_examples, self.preset.model, self.cfg,
                             self.train_examples, lm=lm)
        scorecard["truncated"] = truncation_card(self.truncated, scorecard["truncated"], lm.max_len)
        return outputs, scorecard

    def all_reduce_seconds(self) -> float:
        """One all-reduce of as many values as what trains, across the run's processes (the step's exchange)."""
        return time_all_reduce(self.state.params, self.mesh)


def train_and_evaluate(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    train_examples: Sequence[Example],
    eval_examples: Sequence[Example],
    workdir: Path | None,
    *,
    on_metrics: MetricsHook | None = None,
    on_checkpoint: CheckpointHook | None = None,
    on_started: StartedHook | None = None,
    base: BaseModelConfig | None = None,
    lora: LoraConfig | None = None,
) -> Result:
    """Train to ``train_cfg.total_steps`` optimizer updates in this process, checkpointing, then evaluate.

    ``base`` fine-tunes a pretrained model (``trainer.lm``; with ``lora``,
    adapters only) instead of the byte model of ``model_cfg``.
    ``on_started(info)`` runs once the model is built and the data
    tokenized, before the first step: ``info`` holds ``examples``,
    ``truncated`` (train examples cut to ``max_len``), ``max_len`` and the
    model's description. ``on_metrics(m)`` gets, after every micro-step,
    ``{step, micro_step, loss, grad_norm, learning_rate, tokens, truncated}``
    as Python numbers. ``on_checkpoint(step, path, sha256)`` runs after each
    checkpoint is complete on disk (only with a ``workdir``; checkpoints go
    to ``workdir / "checkpoints"`` and hold only what trains). A base model
    run with a ``workdir`` ends by exporting what it trained to
    ``workdir / "export"`` (``Result.outputs``; ``trainer.export``): under
    LoRA the adapter and the merged model, else the whole model.

    Raises:
        ConfigError: no training examples, or the checkpoint was written for a
            different data set size or seed (its data position would be wrong).
        CheckpointError: the base model directory is unusable (before any step).
    """
    session = Session(Preset(model_cfg, train_cfg, base, lora), train_examples, eval_examples, workdir)
    try:
        if on_started is not None:
            on_started(session.started_info())
        if session.checkpoint is not None and on_checkpoint is not None:
            on_checkpoint(*session.checkpoint)  # a run killed between saving it and announcing it announces it now
        history: list[dict[str, Any]] = []
        while not session.done:
            metrics, saved = session.step()
            history.append(metrics)
            if on_metrics is not None:
                on_metrics(metrics)
            if saved is not None and on_checkpoint is not None:
                on_checkpoint(*saved)
    finally:
        session.ckpt.close()
    outputs, scorecard = session.finish()
    last = session.checkpoint
    return Result(
        step=session.micro // train_cfg.grad_accum_steps,
        state=session.state,
        history=history,
        scorecard=scorecard,
        resumed_from=session.resumed_from,
        checkpoint=last and last[1],
        checkpoint_sha256=last and last[2],
        outputs=outputs,
    )

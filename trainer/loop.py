"""``train_and_evaluate``: the single-process SFT run that entry points and actors call.

Resume on construction: if ``workdir`` holds a checkpoint, the run continues
from it (state and data position) and gives the same loss curve as a run
that was never interrupted. Hooks are the extension points: the run-event
publisher passes ``on_metrics`` / ``on_checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.checkpoint import Checkpointer, sha256_dir
from trainer.config import BaseModelConfig, ConfigError, LoraConfig, ModelConfig, Preset, TrainConfig
from trainer.data import Example, tokenize_counted
from trainer.evaluate import evaluate
from trainer.lm import build_lm
from trainer.train import TrainState, batch_indices, get_batch, make_train_fns

MetricsHook = Callable[[dict[str, Any]], None]
CheckpointHook = Callable[[int, Path, str], None]
StartedHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class Result:
    """What a run ended with."""

    step: int  # optimizer updates done in total
    state: TrainState
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
    """Train to ``train_cfg.total_steps`` optimizer updates, checkpointing, then evaluate.

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
    if not train_examples:
        raise ConfigError("train_and_evaluate needs at least one training example")
    lm = build_lm(Preset(model_cfg, train_cfg, base, lora))
    fns = make_train_fns(lm.apply, train_cfg)
    state = fns.init(lm.params)
    arrays, truncated = tokenize_counted(train_examples, lm.max_len, lm.tokenizer)
    if on_started is not None:
        on_started({"examples": len(train_examples), "truncated": truncated, "max_len": lm.max_len, **lm.info})
    ckpt = checkpointer(workdir)
    data_id = data_identity(len(train_examples), train_cfg)
    last_path: Path | None = None
    last_sha: str | None = None
    try:
        resumed_from, state = restore(ckpt, state, data_id)
        if resumed_from is not None:
            last_path = ckpt.path(resumed_from)
            last_sha = sha256_dir(last_path)
            if on_checkpoint is not None:  # a run killed between saving it and announcing it announces it now
                on_checkpoint(resumed_from, last_path, last_sha)
        k = train_cfg.grad_accum_steps
        history: list[dict[str, Any]] = []
        micro = int(state.step)
        while micro < train_cfg.total_steps * k:
            batch = get_batch(arrays, batch_indices(len(train_examples), train_cfg.batch_size,
                                                    train_cfg.seed, micro))
            state, m = fns.train_step(state, batch, lm.frozen)
            micro += 1
            metrics = {"step": micro // k, "micro_step": micro, **{n: float(v) for n, v in m.items()},
                       "truncated": truncated}
            history.append(metrics)
            if on_metrics is not None:
                on_metrics(metrics)
            update = micro // k
            if checkpoint_due(micro, train_cfg):
                path = ckpt.save(update, state, {**data_id, "next_batch": micro})
                if path is not None:
                    last_path, last_sha = path, sha256_dir(path)
                    if on_checkpoint is not None:
                        on_checkpoint(update, path, last_sha)
    finally:
        ckpt.close()
    if last_path is not None and last_sha is None:
        last_sha = sha256_dir(last_path)
    outputs = export_outputs(lm, state.params, workdir)
    scorecard = evaluate(lm.apply, state.params, eval_examples, model_cfg, train_cfg, train_examples, lm=lm)
    scorecard["truncated"] = truncation_card(truncated, scorecard["truncated"], lm.max_len)
    return Result(
        step=int(state.step) // train_cfg.grad_accum_steps,
        state=state,
        history=history,
        scorecard=scorecard,
        resumed_from=resumed_from,
        checkpoint=last_path,
        checkpoint_sha256=last_sha,
        outputs=outputs,
    )

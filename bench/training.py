"""Training throughput: tokens/s for 1 and 2 Ray actors on one JAX mesh, the collective's share, MFU.

    python -m bench.training [--preset tiny] [--steps 30] [--warmup 4] [--count 200]
    python -m bench.training --qwen3 25m [--steps 8] [--warmup 2]

One process: a broker (or TRACESTREAM_KAFKA_BOOTSTRAP), the processors and a
dataset of ``--count`` generated traces, then the same run (``--steps``
micro-steps, no checkpoints until the end) three ways: the in-process loop
(the baseline: one process, no Ray), ``RayTrainer`` with 1 actor and with 2
actors joined by ``jax.distributed`` on the same global batch. The first
``--warmup`` steps (compilation) are left out of every figure. ``--qwen3``
trains a Qwen3-shaped model written here with random weights (every weight
trains) instead of a byte-model preset.

- tokens/s: tokens the model computes (batch_size × (max_len − 1) per micro-step) per second of step time;
- collective share: the time of one all-reduce of as many float32 values as
  what trains, across the actors' mesh (timed alone, best of 5, after the
  run), over the step time: the gradient exchange XLA performs inside every
  step;
- MFU: model FLOPs per token (6 × matmul parameters + 12 × layers × width ×
  sequence length for attention, PaLM's formula; the byte model's learned
  position table is a lookup, not a matmul) × tokens/s, over the *measured*
  peak: the FLOP/s of a 2048×2048 float32 ``jnp`` matmul timed in this
  process after the runs. That denominator is what this machine achieves on a
  large dense matmul, not a vendor peak.

Speeds are printed, never asserted; the machine is shared, so they are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import numpy as np

from bench.common import (
    emit_json,
    encode_events,
    kafka,
    machine,
    print_machine,
    print_table,
    quiet_logging,
    run_settings,
    running_processors,
    temp_workdir,
    warehouse_kind,
)
from bench.ingest import publish
from dataset.snapshot import DatasetRequest, create_dataset
from deploy.settings import Settings
from schemas.codec import AvroCodec
from schemas.registry import default_registry
from streams.catchup import wait_until_caught_up
from streams.topics import ensure_pipeline_topics


def model_flops_per_token(model_cfg, params) -> float:
    """6 × matmul parameters + 12 × layers × d_model × T (attention scores and mix), forward + backward."""
    from trainer.model import param_count

    matmul = param_count(params) - model_cfg.max_len * model_cfg.d_model  # the position table is a lookup
    return 6.0 * matmul + 12.0 * model_cfg.n_layers * model_cfg.d_model * (model_cfg.max_len - 1)


def measured_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of an n×n float32 matmul with jnp on this machine (best of ``repeats``)."""
    import jax
    import jax.numpy as jnp

    from trainer.mesh import best_seconds

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    return 2.0 * n**3 / best_seconds(lambda: matmul(a).block_until_ready(), repeats)


QWEN3_SHAPES = {
    "25m": {"layers": 8, "hidden": 512, "heads": 8, "kv_heads": 4, "head_dim": 64, "intermediate": 1536,
            "vocab_size": 4000},
    "tiny": {"layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2, "head_dim": 16, "intermediate": 128,
             "vocab_size": 600},
}
"""``--qwen3`` shapes; ``25m`` is ~25M parameters with the vocabulary this bench's traces train."""


def qwen3_flops_per_token(config: dict[str, Any], seq: int) -> float:
    """6 × matmul parameters (attention, MLP, the output head) + 12 × layers × width × T."""
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = d * q * 2 + d * kv * 2 + 3 * d * config["intermediate_size"]
    matmul = layers * per_layer + config["vocab_size"] * d
    return 6.0 * matmul + 12.0 * layers * q * seq


def summarize(history: list[dict[str, Any]], warmup: int, tokens_per_step: int) -> dict[str, float]:
    measured = history[warmup:]
    step_s = sum(m["step_s"] for m in measured)
    return {"steps": len(measured), "step_ms": 1000 * step_s / len(measured),
            "tokens_per_s": tokens_per_step * len(measured) / step_s}


def run_local(preset, train, warmup: int) -> list[dict[str, Any]]:
    """The in-process loop, timed per step through its metrics hook."""
    from trainer.loop import train_and_evaluate

    history: list[dict[str, Any]] = []
    last = [time.perf_counter()]

    def on_metrics(m: dict[str, Any]) -> None:
        now = time.perf_counter()
        history.append({**m, "step_s": now - last[0]})
        last[0] = now

    train_and_evaluate(preset.model, preset.train, train, [], None, on_metrics=on_metrics, base=preset.base,
                       lora=preset.lora)
    return history


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.data import read_examples
    from trainer.distributed import RayTrainer, connect

    base = Settings()
    connect(base)  # Ray first: its daemons start before JAX does anything in this process
    codec = AvroCodec(default_registry())
    info = machine()
    with temp_workdir() as workdir, kafka(base, workdir) as target:
        settings = run_settings(base, home=workdir / "home", bootstrap=target.bootstrap, tag="training")
        print_machine(info, target.description, warehouse_kind(settings))
        await ensure_pipeline_topics(settings, target.kafka)
        events = encode_events(args.count, seed=args.seed)
        await publish(settings, target.kafka, events.items, 300, target.broker_pid)
        async with running_processors(settings, target.kafka) as processors:
            await processors.app.start()
            await wait_until_caught_up(settings, target.kafka)
            manifest = await create_dataset(settings, target.kafka, DatasetRequest("bench"), codec)
        train, _ = await read_examples(target.kafka, manifest, codec)
        preset, flops_per_token, described = model_under_test(args, train, workdir)
        tokens_per_step = preset.train.batch_size * (preset.max_len - 1)
        name = f"qwen3-{args.qwen3}" if args.qwen3 else f"preset {args.preset}"
        print(f"\n{name}: {described}, batch {preset.train.batch_size} × {preset.max_len} tokens, "
              f"{args.steps} steps ({args.warmup} left out), {len(train)} train examples")

        results: dict[str, dict[str, float]] = {}
        results["in-process loop"] = summarize(await asyncio.to_thread(run_local, preset, train, args.warmup),
                                               args.warmup, tokens_per_step)
        for workers in (1, 2):
            trainer = RayTrainer(preset, target.kafka, manifest, None, workers=workers,
                                 run_id=f"bench-{workers}-{time.time_ns()}",
                                 compilation_cache=settings.cache_dir / "jax")
            try:
                await asyncio.to_thread(trainer.start)
                result = await asyncio.to_thread(trainer.train)
                all_reduce_s = await asyncio.to_thread(trainer.all_reduce_seconds)
            finally:
                trainer.shutdown()
            r = results[f"ray, {workers} actor(s)"] = summarize(result.history, args.warmup, tokens_per_step)
            r["collective_share"] = 1000 * all_reduce_s / r["step_ms"]

    peak = measured_peak_flops()
    rows = []
    for label, r in results.items():
        r["mfu"] = r["tokens_per_s"] * flops_per_token / peak
        exchange = (f"all-reduce {100 * r['collective_share']:.1f}% of step time, "
                    if "collective_share" in r else "")
        rows.append((label, (f"{r['tokens_per_s']:,.0f} tokens/s, {r['step_ms']:.1f} ms/step, "
                            f"{exchange}MFU {100 * r['mfu']:.2f}%")))
    one, two = results["ray, 1 actor(s)"], results["ray, 2 actor(s)"]
    rows.append(("2 actors / 1 actor", f"{two['tokens_per_s'] / one['tokens_per_s']:.2f}× tokens/s"))
    rows.append(("2 actors / in-process", f"{two['tokens_per_s'] / results['in-process loop']['tokens_per_s']:.2f}×"))
    rows.append(("model FLOPs per token", f"{flops_per_token:,.0f}"))
    rows.append(("measured peak (2048² f32 matmul)", f"{peak / 1e9:,.1f} GFLOP/s"))
    print_table(f"training throughput, {name}", rows)
    return {"model": name, "peak_flops": peak, "flops_per_token": flops_per_token,
            "results": {k: {n: float(np.round(v, 4)) for n, v in r.items()} for k, r in results.items()}}


def model_under_test(args: argparse.Namespace, train: list[Any], workdir: Any) -> tuple[Any, float, str]:
    """``(preset, model FLOPs per token, description)``: the byte preset, or a Qwen3-shaped checkpoint written here."""
    from trainer.config import from_mapping
    from trainer.model import build, param_count

    steps = {"total_steps": args.steps, "warmup_steps": 1, "checkpoint_every": args.steps, "grad_accum_steps": 1}
    if not args.qwen3:
        preset = from_mapping({"preset": args.preset, "train": steps})
        _, params = build(preset.model, 0)
        return preset, model_flops_per_token(preset.model, params), f"{param_count(params):,} parameters"
    import json

    from devtools.hf_checkpoints import write_checkpoint

    shape = dict(QWEN3_SHAPES[args.qwen3])
    path = write_checkpoint(workdir / "qwen3", "qwen3", texts=[e.prompt + e.completion for e in train],
                            scale=0.02, **shape)
    config = json.loads((path / "config.json").read_text())
    preset = from_mapping({"base_model": {"path": str(path)}, "lora": None,
                           "train": {**steps, "batch_size": args.batch_size, "max_len": args.max_len,
                                     "learning_rate": 1e-3}})
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    q, kv = config["num_attention_heads"] * config["head_dim"], config["num_key_value_heads"] * config["head_dim"]
    total = config["vocab_size"] * d + layers * (2 * d * q + 2 * d * kv + 3 * d * config["intermediate_size"])
    return preset, qwen3_flops_per_token(config, args.max_len - 1), f"~{total / 1e6:.1f}M parameters, all training"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="trainer preset (default: tiny, the default config)")
    parser.add_argument("--steps", type=int, default=30, help="micro-steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out (compilation)")
    parser.add_argument("--count", type=int, default=200, help="traces in the dataset")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--qwen3", choices=sorted(QWEN3_SHAPES), help="a Qwen3-shaped model of this size instead")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step (--qwen3)")
    parser.add_argument("--max-len", type=int, default=256, help="tokens per sequence (--qwen3)")
    args = parser.parse_args()
    quiet_logging()
    emit_json("training", asyncio.run(main_async(args)))


if __name__ == "__main__":
    main()

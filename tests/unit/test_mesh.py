"""The run's mesh on several devices of one process (XLA's host-platform device count): the layout rule,
padding of a batch the device count does not divide, and the same loss curve as one device.

Each case runs in a fresh interpreter, since a process fixes its device count when JAX starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from trainer.mesh import layout, needs_fsdp, run_mesh, global_batch
    from trainer.config import from_mapping
    from trainer.data import Example
    from trainer.loop import train_and_evaluate

    mesh = run_mesh()
    tree = {"rows": np.zeros((8, 6)), "cols": np.zeros((6, 12)), "odd": np.zeros((3, 5)), "scalar": np.zeros(())}
    specs = {fsdp: {k: list(s.spec) for k, s in layout(tree, mesh, fsdp).items()} for fsdp in (True, False)}
    auto = [needs_fsdp(None, mesh, tree), needs_fsdp(True, mesh, tree), needs_fsdp(False, mesh, tree)]
    arrays = {"tokens": np.arange(6 * 4).reshape(6, 4), "loss_mask": np.ones((6, 4), np.int32)}
    batch = global_batch(arrays, np.arange(6), mesh)
    examples = [Example(f"What is {i} + {i}?", f"<answer>{2 * i}</answer>", str(2 * i), "arith") for i in range(20)]
    preset = from_mapping({"preset": "tiny", "train": {"batch_size": 6, "total_steps": 5, "warmup_steps": 1,
                                                       "fsdp": True}})
    result = train_and_evaluate(preset.model, preset.train, examples, [], None)
    print(json.dumps({"devices": mesh.shape["data"], "specs": {str(k): v for k, v in specs.items()},
                      "batch_rows": int(batch["tokens"].shape[0]), "auto": auto,
                      "mask_rows": np.asarray(batch["loss_mask"]).sum(1).tolist(),
                      "losses": [m["loss"] for m in result.history]}))
""")


def run_on(devices: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def one_and_four() -> tuple[dict, dict]:
    return run_on(1), run_on(4)


def test_fsdp_splits_each_array_on_its_largest_divisible_dimension(one_and_four):
    one, four = one_and_four
    assert four["devices"] == 4
    assert four["specs"]["True"] == {"rows": ["data", None], "cols": [None, "data"], "odd": [], "scalar": []}
    assert four["specs"]["False"] == {"rows": [], "cols": [], "odd": [], "scalar": []}
    # fsdp null: shard only when a device reports too little memory; CPUs report no limit, so replicated
    assert four["auto"] == [False, True, False] and one["auto"] == [False, True, False]


def test_a_batch_is_padded_to_the_device_count_with_masked_rows(one_and_four):
    one, four = one_and_four
    assert one["batch_rows"] == 6 and one["mask_rows"] == [4] * 6
    assert four["batch_rows"] == 8 and four["mask_rows"] == [4] * 6 + [0, 0]


def test_four_devices_with_fsdp_follow_the_one_device_curve(one_and_four):
    one, four = one_and_four
    assert one["losses"][-1] < one["losses"][0]
    assert four["losses"] == pytest.approx(one["losses"], rel=2e-5)

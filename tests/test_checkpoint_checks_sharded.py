"""The checks a save runs on every array (finite, fingerprint) on a state sharded over host devices.

Each check is one small program per array, ending in a cross-device reduction when the array is split
(FSDP). With all of them in flight at once, XLA:CPU's in-process collectives deadlocked and aborted the
process after 40 s at the first save of a 4-device FSDP run on 2 cores (reproduced with this state).
"""

from conftest import run_on_host_devices

SCRIPT = """
import jax, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vheat_jax.train import checkpointing

mesh = Mesh(np.array(jax.devices()), ("data",))
split = NamedSharding(mesh, P("data"))
state = {f"w{i}": jax.device_put(np.full((64, 8 * (i % 7 + 1)), i, np.float32), split) for i in range(300)}
state["w7"] = jax.device_put(np.full((64, 8), np.nan, np.float32), split)
assert checkpointing._non_finite_arrays(state) == ["['w7']"]
single = {name: np.asarray(value) for name, value in state.items()}
assert checkpointing._fingerprint_list(state) == checkpointing._fingerprint_list(single)
print("OK")
"""


def test_finite_and_fingerprint_checks_finish_on_a_state_split_over_four_devices():
    run_on_host_devices(SCRIPT, 4)

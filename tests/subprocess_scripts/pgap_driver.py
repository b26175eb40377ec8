"""A P-GaP driver that is SIGKILLed right after its round-1 checkpoint.

    python pgap_driver.py CHECKPOINT_DIR RAY_ADDRESS

Runs kg.gap.PGaPRunner (tests/ray_testlib.py's model, 2 rounds) against the
Ray instance at RAY_ADDRESS; after the checkpoint of round 1 is on disk it
kills its own process (no cleanup), as a crashed driver would.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from keras_gap.gap import ray_runner, rounds  # noqa: E402
import ray_testlib  # noqa: E402

_save = rounds.RoundCheckpoint.save


def _save_then_die(self, state, values):
    _save(self, state, values)
    if state["rounds_done"] == 1:
        print("KILLING DRIVER", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


rounds.RoundCheckpoint.save = _save_then_die
import ray  # noqa: E402

ray.init(address=sys.argv[2], log_to_driver=False)
run = ray_runner.PGaPRunner(ray_testlib.build, ray_testlib.data, target_sparsity=0.8,
                            num_partitions=2, epochs_per_step=1, rounds=2, finetune_epochs=1,
                            num_workers=2, checkpoint_dir=sys.argv[1],
                            fit_kwargs={"shuffle": False})
run.fit()
print("NOT KILLED", flush=True)

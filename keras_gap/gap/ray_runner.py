"""`PGaPRunner`: P-GaP with its K copies trained at the same time on Ray workers.

One round of P-GaP trains K copies of the round's sparse model, copy i with
partition i grown. In-process (``prune_gap(method="pgap")`` + `GaPCallback`)
the copies run one after another; here each runs on a Ray actor:

* the driver builds the model, prunes it with `prune_gap` and sets the
  exact-count random masks (`GaPEngine.initialize`, GaP step 0);
* every round it puts the round's model (weights and masks, numpy arrays) in
  the object store once; worker i restores it, grows partition i, resets the
  optimizer exactly as the in-process P-GaP does at that GaP step (slots
  zeroed, ``iterations`` at the step's in-process value, or a fresh optimizer
  with ``reset_optimizer="fresh"``), trains ``epochs_per_step`` epochs with
  every mask fixed and returns its variables (`rounds.train_copy`);
* the driver merges them and prunes every partition back
  (`GaPEngine.merge_round`: partition i from copy i, everything else
  averaged; the step logic `GaPCallback` drives too), writes a checkpoint
  atomically (`rounds.RoundCheckpoint`) and starts the next round;
* after the last round the driver fine-tunes ``finetune_epochs`` with every
  mask fixed (on the driver: the returned model is the driver's).

This module is the Ray plumbing (cluster, actors, thread limits, shipping the
user's code); the round logic, which needs no Ray, is gap/rounds.py.

Workers are plain Ray actors in a `ray.util.ActorPool` (not Ray Train), each
keeping one model alive across rounds (values are assigned, the model is
never rebuilt). An actor that dies is restarted (``max_restarts``) and redoes
its copy from the round's start; a killed driver resumes from the last round
boundary when a new runner gets the same ``checkpoint_dir``.

Ray is optional: ``pip install 'keras-gap[distributed]'``.
"""

import contextlib
import json
import os
import socket
import time

from keras_gap.gap import rounds
from keras_gap.gap.rounds import CHECKPOINT, fit_inputs, prepare_model  # noqa: F401

EXTRA = "pip install 'keras-gap[distributed]'"


def _import_ray():
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "kg.gap.PGaPRunner runs P-GaP's copies on Ray workers and needs Ray "
            f"(ray>=2.9), which is not installed. Install it with: {EXTRA}") from e
    return ray


# Thread limits: before TensorFlow / JAX / torch run any op --------------------------
def thread_env(threads):
    """Environment variables that cap a worker's math threads at ``threads``.

    Set in the actor's runtime environment, so they hold before the worker
    imports any framework (XLA reads its flags once, at JAX's import).

    Args:
        threads: CPUs of the worker (a float is rounded down, at least 1).

    Returns:
        dict of environment variables.

    Example:
        >>> thread_env(1)["TF_NUM_INTRAOP_THREADS"]
        '1'
    """
    threads = str(max(1, int(threads)))
    env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
           "TF_NUM_INTRAOP_THREADS": threads, "TF_NUM_INTEROP_THREADS": "1"}
    if threads == "1":  # XLA CPU has no thread-count flag; this one makes it single-threaded
        env["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                            + " --xla_cpu_multi_thread_eigen=false").strip()
    return env


def limit_threads(threads, backend):
    """Caps this process's TensorFlow / torch threads (call before any op).

    Args:
        threads: int >= 1, intra-op threads (inter-op: 1).
        backend: the Keras backend name.

    Returns:
        The number of intra-op threads set.

    Example:
        >>> limit_threads(2, "tensorflow")
        2
    """
    threads = max(1, int(threads))
    try:
        import tensorflow as tf  # keras_gap imports TensorFlow on every backend
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except (ImportError, RuntimeError):  # RuntimeError: TF already initialized
        pass
    if backend == "torch":
        import torch
        torch.set_num_threads(threads)
    return threads


class Worker:
    """One P-GaP worker (a Ray actor): one model kept alive across rounds.

    Args:
        build, data: the user's callables (run here, once).
        gap_kwargs: `prune_gap` arguments.
        fit_kwargs: extra `fit` arguments (batch_size, shuffle, ...).
        threads: math threads for this worker.
        seed: base seed; copy j trains with seed ``seed + j``.

    Returns:
        A worker; `train_copy` trains one copy.

    Example:
        >>> actor = ray.remote(Worker).remote(build, data, {...}, {}, 1)
    """

    def __init__(self, build, data, gap_kwargs, fit_kwargs, threads, seed=0):
        # Before any framework op (the driver sets KERAS_BACKEND for its actors).
        backend = os.environ.get("KERAS_BACKEND", "tensorflow")
        self.threads = limit_threads(threads, backend)
        from keras_gap.gap.api import gap_wrappers
        self.model = rounds.prepare_model(build, gap_kwargs)
        self.wrappers = gap_wrappers(self.model)
        self.inputs = rounds.fit_inputs(data())
        self.fit_kwargs = dict(fit_kwargs)
        self.seed = seed
        self.backend = backend

    def train_copy(self, values, round_index, partition, epochs, reset_optimizer,
                   queue=None):
        """Trains the round's model with ``partition`` grown; returns its values
        (`rounds.train_copy`).

        ``queue``: optional Ray queue for per-epoch progress (passed per call:
        an actor handle among the constructor's arguments would make Ray warn
        that restarts depend on the object store).
        """
        t0, pid = time.time(), os.getpid()

        def report(epoch, logs):
            if queue is not None:
                queue.put({"round": round_index, "partition": partition, "pid": pid,
                           "epoch": epoch + 1, "epochs": epochs,
                           "logs": _floats(logs), "seconds": time.time() - t0})

        return rounds.train_copy(self.model, self.wrappers, self.inputs, self.fit_kwargs,
                                 values, round_index, partition, epochs, reset_optimizer,
                                 seed=self.seed, report=report)


def _floats(logs):
    out = {}
    for key, value in logs.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError):
            pass
    return out


def check_reachable(address, timeout=5.0):
    """Raises ConnectionError when ``address`` ("host:port" or "ray://host:port")
    does not accept TCP connections; "auto" and "local" are left to Ray.

    Args:
        address: the Ray address given to `PGaPRunner`.
        timeout: seconds to wait for the TCP connection.

    Returns:
        None.

    Example:
        >>> check_reachable("ray://head:10001")
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"PGaPRunner: `address` must be 'host:port', 'ray://host:port' or "
                         f"'auto'; received {address!r}.")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as e:
        raise ConnectionError(
            f"PGaPRunner: cannot reach the Ray cluster at {address!r} ({e}). Start it "
            "with `ray start --head` (Ray client: port 10001, 'ray://host:10001'), or "
            "pass address=None for a local Ray instance.") from e


@contextlib.contextmanager
def _environ(**values):
    """Sets environment variables for the block, then restores them."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _user_module(fn):
    """The module ``fn`` (or a partial of it) comes from, when it is the user's own code
    (not keras / keras_gap, not a package installed in site-packages); else None."""
    import functools
    import sys
    while isinstance(fn, functools.partial):
        fn = fn.func
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    path = getattr(module, "__file__", None) or ""
    name = getattr(module, "__name__", "")
    if module is None or name.split(".")[0] in ("keras", "keras_gap") \
            or "site-packages" in path or "dist-packages" in path:
        return None
    return module


def _pickle_by_value(ray, fn):
    """Ships ``fn``'s module with it when workers may not import it (a script,
    a test file, a module found through the driver's sys.path only)."""
    module = _user_module(fn)
    if module is not None and module.__name__ != "__main__":
        ray.cloudpickle.register_pickle_by_value(module)


def _code_dirs(fns):
    """Import roots of the user's modules ``fns`` come from: where their sibling
    imports live."""
    dirs = []
    for fn in fns:
        module = _user_module(fn)
        path = getattr(module, "__file__", None)
        if not path:
            continue
        root = os.path.dirname(os.path.abspath(path))
        if module.__name__ != "__main__":  # up one level per package in its name
            for _ in range(module.__name__.count(".")):
                root = os.path.dirname(root)
        if root not in dirs:
            dirs.append(root)
    return dirs


def _cluster_is_local(ray):
    """True when every alive Ray node is this machine (workers see its files)."""
    try:
        here = ray.util.get_node_ip_address()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
    except Exception:  # noqa: BLE001 - an older / remote API: assume remote
        return False
    return bool(nodes) and all(n.get("NodeManagerAddress") == here for n in nodes)


def _missing_module(error):
    """The module name of a ``ModuleNotFoundError`` in a worker's error text, or None."""
    import re
    match = re.search(r"No module named '([^']+)'", str(error))
    return match.group(1) if match else None


def _local_cpus():
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except AttributeError:
        return os.cpu_count() or 1


def _local_gpus():
    try:
        import tensorflow as tf
        return len(tf.config.list_physical_devices("GPU"))
    except Exception:  # noqa: BLE001 - no TF / no GPU runtime: count none
        return 0


class PGaPRunner:
    """Runs P-GaP with its copies on Ray workers, then fine-tunes.

    ``build`` and ``data`` run on every worker (and on the driver, which
    prunes, merges and fine-tunes): give functions, not models or arrays.

    Args:
        build: callable returning a compiled, unpruned Keras model (same
            architecture every call; keep layer names fixed).
        data: callable returning the training data: ``(x, y)``,
            ``((x, y), (x_val, y_val))``, ``(train_ds, val_ds)``, a dataset,
            or a dict of `fit` arguments.
        target_sparsity: overall target in [0, 1).
        num_partitions: K (one copy per partition each round).
        epochs_per_step: epochs each copy trains per round.
        rounds: P-GaP rounds.
        finetune_epochs: epochs of fine-tuning with every mask fixed (on the
            driver).
        num_workers: Ray actors (default: ``num_partitions``, at most
            that); each round's K copies are spread over them.
        address: None starts a local Ray instance sized to this machine
            (or uses the one already initialized in this process);
            "host:port", "ray://host:10001" or "auto" joins a cluster.
        checkpoint_dir: directory for the round-boundary checkpoint; a new
            runner with the same directory resumes from it.
        gap_kwargs: more `prune_gap` arguments (partitioning, distribution,
            keep_dense, seed, block_size, ...).
        fit_kwargs: more `fit` arguments for the workers and the fine-tuning
            (batch_size, shuffle, ...).
        reset_optimizer: "all" (default), "fresh" or "none",
            as in `GaPCallback`; every copy zeroes the optimizer slots, as in
            the in-process P-GaP.
        cpus_per_worker: CPUs per actor (default: the cluster's CPUs divided
            by ``num_workers``); TensorFlow's / JAX's threads are capped to it.
        gpus_per_worker: GPUs per actor (default 0).
        max_restarts: how often a dead actor is restarted (its copy is
            redone from the round's start).
        seed: base seed of the copies' shuffling and dropout.
        verbose: 1 prints a line per worker epoch and per merge; 0 is silent.
        log_to_driver: forward the workers' stdout/stderr (framework logs) to
            this process (default False: progress comes from the driver).
        runtime_env: optional Ray runtime environment for the actors (e.g.
            ``{"working_dir": "."}`` to ship your code to a cluster). Without
            ``working_dir`` / ``py_modules``, on a cluster whose nodes are all
            this machine, the workers' PYTHONPATH gets the directories of the
            ``build`` / ``data`` modules, so their sibling imports (``from
            helpers import mlp``) work; a worker that still cannot import a
            module stops the run with an error that names it and the way out.

    Returns:
        A runner; `fit` returns the pruned model. ``history`` holds one dict
        per round (per-copy Keras histories, times, sparsity) and
        ``finetune_history`` the fine-tuning's History.history.

    Example:
        >>> run = kg.gap.PGaPRunner(build, data, target_sparsity=0.9,
        ...                         num_partitions=4, epochs_per_step=2, rounds=3,
        ...                         finetune_epochs=4, num_workers=4,
        ...                         checkpoint_dir="runs/pgap")
        >>> pruned = run.fit()
        >>> final = kg.strip_pruning(pruned)
    """

    def __init__(self, build, data, target_sparsity=0.9, num_partitions=4, epochs_per_step=1,
                 rounds=1, finetune_epochs=0, num_workers=None, address=None,
                 checkpoint_dir=None, gap_kwargs=None, fit_kwargs=None,
                 reset_optimizer="all", cpus_per_worker=None, gpus_per_worker=0,
                 max_restarts=2, seed=0, verbose=1, log_to_driver=False, runtime_env=None):
        from keras_gap.gap.engine import RESET_MODES
        for name, fn in (("build", build), ("data", data)):
            if not callable(fn):
                raise ValueError(f"PGaPRunner: `{name}` must be a function that runs on every "
                                 f"worker; received {type(fn).__name__}.")
        for name, value, low in (("num_partitions", num_partitions, 1),
                                 ("epochs_per_step", epochs_per_step, 1),
                                 ("rounds", rounds, 1), ("finetune_epochs", finetune_epochs, 0),
                                 ("max_restarts", max_restarts, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"PGaPRunner: `{name}` must be an int >= {low}; "
                                 f"received {value!r}.")
        if num_workers is None:
            num_workers = num_partitions
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
            raise ValueError(f"PGaPRunner: `num_workers` must be an int >= 1; "
                             f"received {num_workers!r}.")
        if num_workers > num_partitions:
            raise ValueError(
                f"PGaPRunner: num_workers={num_workers} is more than num_partitions="
                f"{num_partitions}: each round trains one copy per partition, so at most "
                f"{num_partitions} workers have work. Use num_workers <= {num_partitions}.")
        if reset_optimizer not in RESET_MODES:
            raise ValueError(f"PGaPRunner: `reset_optimizer` must be one of {RESET_MODES}; "
                             f"received {reset_optimizer!r}.")
        gap_kwargs = dict(gap_kwargs or {})
        for key in ("method", "epochs_per_step", "steps_per_step", "finetune_steps"):
            if key in gap_kwargs:
                raise ValueError(f"PGaPRunner: `gap_kwargs` cannot set {key!r}; the runner "
                                 "sets it (P-GaP counted in epochs).")
        from keras_gap import criteria
        if criteria.get(gap_kwargs.get("criterion", "magnitude")).needs_gradients:
            raise ValueError(
                "PGaPRunner prunes back on the driver after merging the copies, where no "
                f"training gradients exist; criterion {gap_kwargs['criterion']!r} needs them. "
                "Use a magnitude criterion here, or the in-process "
                "prune_gap(method='pgap', criterion=...) with GaPCallback.")
        self.build, self.data = build, data
        self.gap_kwargs = dict(gap_kwargs, target_sparsity=target_sparsity,
                               num_partitions=num_partitions, epochs_per_step=epochs_per_step,
                               rounds=rounds, finetune_epochs=finetune_epochs)
        self.num_partitions, self.epochs_per_step = num_partitions, epochs_per_step
        self.rounds, self.finetune_epochs = rounds, finetune_epochs
        self.num_workers, self.address = num_workers, address
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.fit_kwargs = dict(fit_kwargs or {})
        for key in ("epochs", "callbacks", "x", "y", "validation_data"):
            if key in self.fit_kwargs:
                raise ValueError(f"PGaPRunner: `fit_kwargs` cannot set {key!r} (the runner "
                                 "sets epochs and callbacks; data comes from `data()`).")
        self.reset_optimizer = reset_optimizer
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.max_restarts, self.seed, self.verbose = max_restarts, int(seed), verbose
        self.log_to_driver, self.runtime_env = bool(log_to_driver), runtime_env
        self.history = []
        self.finetune_history = None
        self.model = None

    # Public ------------------------------------------------------------------------
    def fit(self):
        """Runs the remaining rounds and the fine-tuning; returns the pruned model.

        Returns:
            The driver's GaP model (strip it with `keras_gap.strip_pruning`).

        Example:
            >>> pruned = run.fit()
            >>> run.history[-1]["sparsity"]
        """
        ray = _import_ray()
        model, engine = rounds.driver_engine(self.build, self.gap_kwargs, self.reset_optimizer)
        state, base = self._load_checkpoint(model, engine)
        if state is None:
            engine.initialize()  # exact-count random masks (partition 0 grown ...)
            base = engine.round_base  # ... the round's base is the all-sparse model
            state = {"rounds_done": 0, "finetuned": False, "history": [],
                     "steps_per_step": None}
            self._checkpoint.save(state, base)
        self.history = list(state["history"])
        from keras_gap.gap import pgap
        if state["rounds_done"] < self.rounds:
            with self._ray_session(ray):
                base = self._run_rounds(ray, model, engine, state, base)
        pgap.restore(model, engine.wrappers, base)
        if not state["finetuned"]:
            self._finetune(model, engine, state, base)
        elif state.get("final_step") is not None:
            for w in engine.wrappers:
                w.pruning_step.assign(state["final_step"])
        self.model = model
        return model

    # Driver side ---------------------------------------------------------------------
    def _ray_session(self, ray):
        runner = self

        @contextlib.contextmanager
        def session():
            started = False
            if not ray.is_initialized():
                if runner.address is not None:
                    check_reachable(runner.address)
                    ray.init(address=runner.address, log_to_driver=runner.log_to_driver)
                else:
                    # Our own local instance: token authentication off for it
                    # (Ray >= 2.5x writes ~/.ray/auth_token otherwise); the
                    # variable is restored once the instance is up.
                    with _environ(RAY_AUTH_MODE="disabled"):
                        ray.init(num_cpus=_local_cpus(), num_gpus=_local_gpus(),
                                 include_dashboard=False,
                                 log_to_driver=runner.log_to_driver)
                started = True
            try:
                yield
            finally:
                if started:
                    ray.shutdown()
        return session()

    def _placement(self, ray):
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        per_cpu = self.cpus_per_worker
        if per_cpu is None:
            per_cpu = max(1, int(cpus // self.num_workers)) if cpus >= self.num_workers else 1
        need_cpu, need_gpu = per_cpu * self.num_workers, self.gpus_per_worker * self.num_workers
        if need_cpu > cpus + 1e-9 or need_gpu > gpus + 1e-9:
            raise ValueError(
                f"PGaPRunner: num_workers={self.num_workers} with {per_cpu} CPU(s) and "
                f"{self.gpus_per_worker} GPU(s) each needs {need_cpu:g} CPUs and "
                f"{need_gpu:g} GPUs, but the Ray cluster has {cpus:g} CPUs and {gpus:g} "
                f"GPUs. Use num_workers <= {max(1, int(cpus // max(per_cpu, 1e-9)))}, or a "
                "smaller cpus_per_worker (e.g. 0.5 to share cores).")
        return per_cpu

    def _start_workers(self, ray, per_cpu):
        import keras
        for fn in (self.build, self.data):
            _pickle_by_value(ray, fn)
        env = {"KERAS_BACKEND": keras.backend.backend(),
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               **thread_env(per_cpu)}
        runtime_env = dict(self.runtime_env or {})
        if not {"working_dir", "py_modules"} & set(runtime_env) and _cluster_is_local(ray):
            # Workers on this machine import the user's modules (and the siblings they
            # import) from where the driver found them.
            dirs = _code_dirs((self.build, self.data))
            if dirs:
                old_path = runtime_env.get("env_vars", {}).get(
                    "PYTHONPATH", os.environ.get("PYTHONPATH", ""))
                env["PYTHONPATH"] = os.pathsep.join(dirs + ([old_path] if old_path else []))
        runtime_env["env_vars"] = {**env, **runtime_env.get("env_vars", {})}
        queue = None
        if self.verbose:
            from ray.util.queue import Queue
            queue = Queue(actor_options={"num_cpus": 0})
        actor = ray.remote(Worker).options(
            num_cpus=per_cpu, num_gpus=self.gpus_per_worker, max_restarts=self.max_restarts,
            max_task_retries=self.max_restarts, runtime_env=runtime_env)
        workers = [actor.remote(self.build, self.data, dict(self.gap_kwargs),
                                self.fit_kwargs, per_cpu, self.seed)
                   for _ in range(self.num_workers)]
        return workers, queue

    def _run_rounds(self, ray, model, engine, state, base):
        from ray.util import ActorPool

        per_cpu = self._placement(ray)
        self._say(f"[P-GaP] starting {self.num_workers} Ray workers ({per_cpu:g} CPU, "
                  f"{self.gpus_per_worker:g} GPU, {max(1, int(per_cpu))} threads each)")
        workers, queue = self._start_workers(ray, per_cpu)
        try:
            k = self.num_partitions
            for r in range(state["rounds_done"], self.rounds):
                t0 = time.time()
                base_ref = ray.put(base)  # one copy in the object store for all workers
                pool = ActorPool(workers)
                for p in range(k):
                    pool.submit(lambda a, p: a.train_copy.remote(
                        base_ref, r, p, self.epochs_per_step, self.reset_optimizer, queue), p)
                results = {}
                while pool.has_next():
                    self._drain(queue)
                    try:
                        res = pool.get_next_unordered(timeout=0.5)
                    except TimeoutError:
                        continue
                    except Exception as e:  # a worker's error: stop cleanly
                        raise self._worker_error(e, r) from None
                    results[res["partition"]] = res
                self._drain(queue)
                t1 = time.time()
                engine.round_base = base
                base = engine.merge_round({p: results[p]["values"] for p in results})
                merge_s = time.time() - t1
                sparsity = engine.sparsity()
                wall = time.time() - t0
                slowest = max(res["seconds"] for res in results.values())
                entry = {"round": r + 1, "sparsity": sparsity, "seconds": wall,
                         "copy_seconds": {str(p): results[p]["seconds"] for p in sorted(results)},
                         "merge_seconds": merge_s,
                         "transfer_seconds": max(0.0, wall - slowest - merge_s),
                         "copies": {str(p): results[p]["history"] for p in sorted(results)},
                         "worker_pids": {str(p): results[p]["pid"] for p in sorted(results)},
                         "worker_threads": {str(p): results[p]["threads"]
                                            for p in sorted(results)}}
                self.history.append(entry)
                state.update(rounds_done=r + 1, history=self.history,
                             steps_per_step=results[0]["steps_per_step"])
                self._checkpoint.save(state, base)
                self._say(f"[P-GaP] round {r + 1}/{self.rounds}: merged {len(results)} copies "
                          f"in {merge_s:.2f} s, pruned back to sparsity {sparsity:.4f}; round "
                          f"{wall:.1f} s (slowest copy {slowest:.1f} s)"
                          + (f"; checkpoint {self._checkpoint.path}"
                             if self.checkpoint_dir else ""))
        finally:
            for w in workers:
                ray.kill(w)
            if queue is not None:
                queue.shutdown()
        return base

    def _worker_error(self, error, round_index):
        where = (f" The checkpoint in {self.checkpoint_dir!r} holds the last completed round "
                 f"({round_index}); a new runner with the same checkpoint_dir resumes there."
                 if self.checkpoint_dir else "")
        missing = _missing_module(error)
        if missing is not None:
            dirs = _code_dirs((self.build, self.data)) or ["."]
            return RuntimeError(
                f"PGaPRunner: the Ray workers cannot import module {missing!r}, which your "
                "build or data function needs (the function itself is shipped, the modules "
                "it imports are not). Ship your code with the runner: PGaPRunner(..., "
                f"runtime_env={{'working_dir': {dirs[0]!r}}}) or runtime_env={{'py_modules': "
                f"[...]}} naming the module's directory; or install it on every node.{where}"
                f"\nWorker error:\n{error}")
        return RuntimeError(
            f"PGaPRunner: a worker failed in round {round_index + 1}; the run stopped.{where}\n"
            f"Worker error:\n{error}")

    def _drain(self, queue):
        if queue is None:
            return
        while True:
            try:
                item = queue.get_nowait()
            except Exception:  # noqa: BLE001 - ray.util.queue.Empty
                return
            logs = item["logs"]
            metrics = " ".join(f"{k} {v:.4f}" for k, v in logs.items()
                               if k not in ("sparsity", "gap_partition")
                               and not k.startswith("sparsity_p"))
            self._say(f"[P-GaP] round {item['round'] + 1}/{self.rounds} partition "
                      f"{item['partition']} (pid {item['pid']}) epoch "
                      f"{item['epoch']}/{item['epochs']}: {metrics} sparsity "
                      f"{logs.get('sparsity', float('nan')):.4f} ({item['seconds']:.1f} s)")

    def _finetune(self, model, engine, state, base):
        import keras

        from keras_gap.gap import pgap
        t0 = time.time()
        self.finetune_history = rounds.finetune(
            model, engine, base, fit_inputs(self.data()), self.fit_kwargs,
            self.finetune_epochs, self.reset_optimizer, self.rounds * self.num_partitions,
            state.get("steps_per_step"))
        if self.finetune_history is not None:
            self._say(f"[P-GaP] fine-tuned {self.finetune_epochs} epochs on the driver in "
                      f"{time.time() - t0:.1f} s: " + " ".join(
                          f"{key} {vs[-1]:.4f}" for key, vs in self.finetune_history.items()))
        state.update(finetuned=True, finetune_history=self.finetune_history,
                     final_step=int(keras.ops.convert_to_numpy(engine.wrappers[0].pruning_step)))
        self._checkpoint.save(state, pgap.snapshot(model, engine.wrappers))

    # Checkpoints -----------------------------------------------------------------------
    def _load_checkpoint(self, model, engine):
        from keras_gap.gap import pgap
        shapes = [list(v.shape) for v in pgap._tracked_variables(model, engine.wrappers)]
        signature = {"gap_kwargs": json.loads(json.dumps(self.gap_kwargs, default=repr)),
                     "reset_optimizer": self.reset_optimizer, "seed": self.seed,
                     "shapes": shapes}
        self._checkpoint = rounds.RoundCheckpoint(self.checkpoint_dir, signature)
        state, values = self._checkpoint.load()
        if state is not None:
            self._say(f"[P-GaP] resuming from {self._checkpoint.path}: {state['rounds_done']}/"
                      f"{self.rounds} rounds done"
                      + (", fine-tuned" if state.get("finetuned") else ""))
            self.finetune_history = state.get("finetune_history")
        return state, values

    def _say(self, line):
        if self.verbose:
            print(line, flush=True)


__all__ = ["PGaPRunner"]

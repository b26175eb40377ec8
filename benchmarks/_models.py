"""Models, data splits and pruning set-ups shared by the benchmarks.

* ``fashion_cnn``: the Fashion-MNIST CNN of gap_vs_baselines.py and
  pgap_parallel.py (conv16-conv32-pool-conv64-pool-fc128-fc10);
  ``KEEP_DENSE`` its layers no pruning method touches.
* ``fashion_splits``: the train / held-out validation / test images of
  structured.py and growing.py.
* ``channel_pruned``: channel GMP and channel C-GaP (structured.py, growing.py);
  ``accuracy``: top-1 accuracy of a model on arrays.

Layer names, shapes and the order layers are built in (which fixes the order
their initializers draw random numbers) are part of the committed results:
changing them changes every number in benchmarks/results/.
"""

KEEP_DENSE = ("conv1", "logits")
PRUNE_FRACTION = 0.6  # channel pruning: share of the steps spent pruning (GMP ramp, GaP steps)


def fashion_cnn(rescale=False):
    """The Fashion-MNIST CNN; ``rescale=True`` puts ``Rescaling(1/255)`` first (for
    raw uint8 images; it has no weights, so initialization is the same)."""
    import keras
    head = [keras.layers.Rescaling(1 / 255.0)] if rescale else []
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        *head,
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(128, activation="relu", name="fc1"),
        keras.layers.Dense(10, name="logits"),
    ], name="cnn")


def fashion_splits(train_images, val_images, test_images):
    """((x, y), (x_val, y_val), (x_test, y_test)) as uint8 images: the first
    ``train_images`` of the training split, its last ``val_images`` (held out) and
    the first ``test_images`` of the test split (None: all 10,000)."""
    import keras_gap as kg
    x, y = kg.datasets.load_numpy("fashion_mnist", "train")
    xt, yt = kg.datasets.load_numpy("fashion_mnist", "test", limit=test_images)
    if train_images + val_images > len(x):
        raise ValueError(f"--train_images ({train_images}) + --val_images ({val_images}) "
                         f"exceed the {len(x):,} training images")
    return ((x[:train_images], y[:train_images]), (x[-val_images:], y[-val_images:]),
            (xt, yt))


def channel_pruned(model, method, sparsity, total_steps, seed):
    """(model, callbacks) for ``method`` "dense", "gmp" (channel GMP: cubic ramp to
    ``sparsity`` of the channels over ``PRUNE_FRACTION`` of the steps) or "cgap"
    (channel C-GaP, 2 partitions, 2 rounds over the same steps, then fine-tuning).
    ``seed`` seeds C-GaP's random initial masks."""
    import keras_gap as kg
    prune_steps = int(PRUNE_FRACTION * total_steps)
    if method == "dense":
        return model, []
    if method == "gmp":
        schedule = kg.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=prune_steps,
                                      frequency=max(prune_steps // 10, 1))
        pruned = kg.prune_low_magnitude(model, pruning_schedule=schedule, structure="channel")
        return pruned, [kg.UpdatePruningStep()]
    if method == "cgap":
        k, rounds = 2, 2
        per_step = max(prune_steps // (k * rounds), 1)
        pruned = kg.prune_gap(model, target_sparsity=sparsity, num_partitions=k,
                              rounds=rounds, steps_per_step=per_step,
                              finetune_steps=total_steps - k * rounds * per_step,
                              structure="channel", seed=seed)
        return pruned, [kg.GaPCallback(verbose=0)]
    raise ValueError(f"unknown method {method!r}: expected 'dense', 'gmp' or 'cgap'")


def accuracy(model, x, y):
    import numpy as np
    return float((np.asarray(model.predict(x, batch_size=500, verbose=0)).argmax(-1)
                  == y).mean())


def summarize_channel_runs(rows, lat):
    """One entry per (method, sparsity): accuracy mean / std over seeds and vs dense,
    params, MACs and their reduction, training MACs, and (where ``lat`` has the
    method's ``latency_set``) speed-ups over dense and TFLite speed-up / MAC reduction."""
    import statistics
    groups = {}
    for r in rows:
        groups.setdefault((r["method"], r["sparsity"]), []).append(r)
    dense = groups[("dense", 0.0)]
    dense_acc = statistics.mean(r["test_accuracy"] for r in dense)
    out = []
    for (method, s), rs in groups.items():
        acc = [r["test_accuracy"] for r in rs]
        entry = {"method": method, "sparsity": s, "seeds": len(rs),
                 "test_accuracy_mean": statistics.mean(acc),
                 "test_accuracy_std": statistics.pstdev(acc),
                 "val_accuracy_mean": statistics.mean(r["val_accuracy"] for r in rs),
                 "accuracy_vs_dense": statistics.mean(acc) - dense_acc,
                 "params": rs[0]["params"], "macs": rs[0]["macs"],
                 "macs_reduction": dense[0]["macs"] / rs[0]["macs"],
                 "train_macs_ratio": statistics.mean(r["train_macs_ratio"] for r in rs)}
        key = f"{method}_{s}"
        if key in lat:
            base = lat["dense_0.0"]
            entry["latency"] = lat[key]
            for k in lat[key]:
                entry[f"{k}_speedup"] = base[k]["median_ms"] / lat[key][k]["median_ms"]
            entry["tflite_speedup_over_mac_reduction"] = (
                entry["tflite_b1_speedup"] / entry["macs_reduction"])
        out.append(entry)
    return out

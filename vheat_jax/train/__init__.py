"""Training: one loop (``loop``) for every task; ``train.py`` -> :func:`vheat_jax.train.loop.train_and_evaluate`.

Modules: ``config`` (the shared fields and the classification recipe), ``loop`` (the
loop and the :class:`~vheat_jax.train.loop.Task` interface), ``classification`` (the
classification task: steps, state, evaluation), ``optim``, ``state``, ``sharding``,
``distributed``, ``checkpointing``, ``preemption``, ``pretrained`` (``init_from``),
``metrics``. Segmentation and detection tasks live in ``vheat_jax.seg.task`` and
``vheat_jax.det.task``. See docs/design.md "Training".
"""

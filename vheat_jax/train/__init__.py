"""Classification trainer: ``train.py`` -> :func:`vheat_jax.train.trainer.train_and_evaluate`.

Modules: ``config`` (fields and the official recipe), ``trainer`` (loop, steps),
``optim``, ``state``, ``sharding``, ``distributed``, ``checkpointing``,
``preemption``, ``pretrained`` (``init_from``), ``metrics``. See docs/design.md
"Training".
"""

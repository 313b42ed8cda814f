"""Image classification: vHeat trained and evaluated as the official ImageNet-1k recipe does.

The model is the core :class:`vheat_jax.model.VHeat` (``vheat_jax.create_model``); this
package is the task around it, with the same module names as ``vheat_jax.seg`` and
``vheat_jax.det`` for the same roles:

* ``config`` - ``default_config()`` / ``imagenet_config()``: every field the trainer reads;
* ``data`` - the grain loaders (``sources``, ``transforms``, ``randaugment``, ``mixup``,
  ``digits`` on the host; ``on_device`` finishes the recipe under ``jit``; see README.md here);
* ``training`` - the model from ``config.model``, ``TrainState``, the train and eval steps
  (``optim``: the schedule, AdamW, clipping, accumulation);
* ``task`` - ``ClassificationTask`` on the shared loop (:mod:`vheat_jax.train.loop`);
* ``evaluation`` - what ``eval.py`` runs: accuracy, parameters, FLOPs, throughput;
* ``pretrained`` - ``config.init_from`` (the shared policy, the classifier re-initialised
  where the class count differs); ``aot`` - compiling the train step for a TPU slice.
"""

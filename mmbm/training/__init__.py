"""Training: the trainer and its pieces (run config, LR schedule, task mixing, checkpoints, logs, data, distributed).

``python -m mmbm.training`` (``__main__``) is the entry point; ``trainer`` runs the
loop, configured by ``train_config.TrainConfig``. Only this package imports
training-only packages (tensorboard, matplotlib).

May import the model, ``mmbm.data``, ShapesWorld, decoding and
``mmbm.evaluate.metrics`` (validation); the model, the pipeline, evaluation and the
demo never import this package.
"""

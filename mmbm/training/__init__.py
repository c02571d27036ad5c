"""The trainer's pieces: config, LR schedule, task mixing, checkpoints, logs, data, distributed.

``python -m mmbm.train`` (mmbm/train.py) is the entry point; mmbm.training.trainer
runs the loop. Only this package and mmbm/train.py import training-only packages
(tensorboard, matplotlib); the model and serving code never import this package.
"""

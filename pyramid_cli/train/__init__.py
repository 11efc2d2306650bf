"""Training: ``loop`` is the one training loop (schedule, logging, evaluation, checkpoints, resumption),
``codec`` and ``lm`` supply its step and evaluation for each model, ``config`` holds their settings,
``common`` the DDP set-up, LR schedules, seeding and config overrides they share.

    from pyramid_cli.train import CodecTrainConfig, train_codec
    train_codec("runs/small", CodecTrainConfig(steps=2000), corpus="data/corpus")
"""

from pyramid_cli.train.codec import TrainResult, train_codec
from pyramid_cli.train.config import CodecTrainConfig

__all__ = ["CodecTrainConfig", "TrainResult", "train_codec"]

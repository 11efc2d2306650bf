"""Training loops: ``codec`` (hierarchical PyramidCodec training); ``common`` holds DDP set-up,
LR schedules, seeding and config overrides shared by the loops.

    from pyramid_cli.train import CodecTrainConfig, train_codec
    train_codec("runs/small", CodecTrainConfig(steps=2000), corpus="data/corpus")
"""

from pyramid_cli.train.codec import CodecTrainConfig, TrainResult, train_codec

__all__ = ["CodecTrainConfig", "TrainResult", "train_codec"]

"""Library side of `train_sft.py`: arguments and checks, stage data, model/adapter loading, the projector-input
cache, offline logs and the Hub file set."""

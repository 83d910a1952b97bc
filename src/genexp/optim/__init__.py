"""Optimizers beyond torch.optim and learning-rate schedules that need the run length (conf/optimizer, conf/scheduler)."""

"""genexp: Lightning + Hydra experiments that train generative models and make them smaller and faster."""

__version__ = "0.1.0"

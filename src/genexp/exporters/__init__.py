"""What each model family ships as ONNX graphs (calibration data, install), with a default for any model.

``registry`` maps a model class to its ``Exporter``; importing this package registers the built-in families
(``gpt``, ``gan``, ``vae``, ``diffusion``). Any other ``GenerativeModule`` gets the default exporter.
"""

from genexp.exporters import diffusion, gan, gpt, vae  # noqa: F401  (each registers its family)

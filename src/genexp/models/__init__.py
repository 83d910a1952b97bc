"""Networks (``transformer``, ``dcgan``, ``vae_net``, ``unet``: plain ``nn.Module``s) and one LightningModule per
family (``gpt``, ``gan``, ``vae``, ``diffusion``), each a ``GenerativeModule`` (``base``); ``ema`` is the weight
average the GAN and diffusion sample with."""

"""LightningDataModules: images (digits, MNIST, Fashion-MNIST, CIFAR-10) and character-level text."""

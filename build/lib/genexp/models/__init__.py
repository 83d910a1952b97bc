"""LightningModules: every family subclasses `GenerativeModule` (base.py)."""

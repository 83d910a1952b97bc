"""genexp's Hydra configs (this folder ships in the wheel as the package ``genexp.conf``)."""

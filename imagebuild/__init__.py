"""imagebuild: one spec -> containerd config, user-data, Packer template, verified images."""
__version__ = "0.1.0"

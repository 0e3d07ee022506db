"""The Z-Image-Turbo engine: model code, pipeline, and the ZeroMQ server. Never imports bpy."""

__version__ = "0.1.0"

"""Wire protocol and client library for the Z-Image engine. Imports neither torch nor bpy."""

PROTOCOL_VERSION = 1

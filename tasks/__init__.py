"""Fabric/Invoke tasks: thin wrappers that parse flags, build settings and call `deploy`."""

"""Programs that run on the GPU host with the standard library only, shipped as package data."""

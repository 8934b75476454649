"""Runtimes: how a run is started and watched on a host (compose: Docker Compose; native: a supervised process)."""

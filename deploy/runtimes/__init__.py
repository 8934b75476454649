"""Runtimes: how a run is started and watched on a host, as strategies below the flow.

base.py the shared Step, Plan, ServiceState, DeployResult and wait, and the Runtime/Service
protocols - compose.py Docker Compose - native/ a supervised process in a virtualenv (no Docker).
"""

"""Runtimes: how a run is started and watched on a host, as strategies below the flow.

base.py what every runtime shares: Step, Plan, CodeSync, ServiceState, Look, DeployResult, the wait, the
ImageSource, Runtime and Service protocols - code/ what code travels and how (runtime-neutral) -
compose.py Docker Compose - native/ a supervised process in a virtualenv (no Docker). No runtime
imports another; the flow reaches them through base.py and deploy.flow.choose.
"""

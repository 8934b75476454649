"""The real servers the tests use live in the library (the demo runs them too): re-exported here."""

from deploy.dev.embedded import SSHD, S3Server, SshServer, free_port, stop_process, wait_for

__all__ = ["SSHD", "S3Server", "SshServer", "free_port", "stop_process", "wait_for"]

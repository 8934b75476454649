"""SSH hosts: connecting (ssh), running a command or writing a file there (remote), rsync (rsync), what a
host has (probe), its .env (envfile), dataset staging (dataset), results back (results), a bucket key
or a name a host sent as a path (paths), the ssh sessions fab starts for the user: a shell, a tunnel (session).

``from deploy.hosts import HostSpec, connect`` is the documented entry point.
"""

from deploy.hosts.ssh import (AcceptNewHostKeys, HostOptions, HostSpec, Outcome, connect, connection, for_each_host,
                              hosts_from, require_sftp)

__all__ = ["AcceptNewHostKeys", "HostOptions", "HostSpec", "Outcome", "connect", "connection", "for_each_host",
           "hosts_from", "require_sftp"]

"""Can the other nodes reach rank 0's MASTER_ADDR:MASTER_PORT? Checked before a multi-node group starts.

    python3 rendezvous.py listen PORT SECONDS   # on rank 0: prints "listening PORT PID" once bound, detaches
    python3 rendezvous.py connect HOST PORT     # on the others: exit 0 when it connects, else 1

Standard library only; deploy runs it with ``python3 -c`` (nothing is copied to the host). ``listen``
binds before it answers and then daemonises, so the SSH command returns exactly when the port is
ready (no polling) and the listener outlives the session; it accepts and closes connections until
SECONDS pass or it gets SIGTERM (deploy kills it by the pid it printed). Nothing listens on the port
before training starts, which is what makes it free for this check.
"""

from __future__ import annotations

import os
import socket
import sys


def bind(port: int) -> socket.socket:
    """A listening socket on every IPv4 address (as torch's rendezvous store listens)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(16)
    return sock


def serve(sock: socket.socket, seconds: float) -> None:
    """Accept and close connections until ``seconds`` pass without one."""
    sock.settimeout(seconds)
    try:
        while True:
            sock.accept()[0].close()
    except OSError:
        pass


def listen(port: int, seconds: float) -> int:
    """Bind, detach a daemon that serves, print ``listening PORT PID`` and return."""
    try:
        sock = bind(port)
    except OSError as exc:
        print(f"cannot listen on port {port}: {exc.strerror or exc}", flush=True)
        return 1
    bound = sock.getsockname()[1]
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the daemon: its own session, no stdio tying it to the SSH channel
        os.close(read_end)
        os.setsid()
        if os.fork() != 0:
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.write(write_end, str(os.getpid()).encode())
        os.close(write_end)
        serve(sock, seconds)
        os._exit(0)
    os.close(write_end)
    sock.close()
    os.wait()
    with os.fdopen(read_end, "rb") as pipe:
        pid = pipe.read().decode()
    print(f"listening {bound} {pid}", flush=True)
    return 0


def connect(host: str, port: int, timeout: float = 5.0) -> int:
    """Exit 0 when ``host:port`` accepts a connection, else say why and exit 1."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        print(f"unreachable: {exc}", flush=True)
        return 1
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "listen":
        return listen(int(argv[1]), float(argv[2]))
    if len(argv) == 3 and argv[0] == "connect":
        return connect(argv[1], int(argv[2]))
    print("usage: rendezvous.py listen PORT SECONDS | connect HOST PORT", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A remote shell for rsync's ``-e`` that makes a file vanish mid-transfer, deterministically.

``python stall_rsh.py PATH BYTES COMMAND...``: runs COMMAND (the real remote shell, to which rsync
appends the host and its server command) and passes its streams through. Once BYTES have come back
from the sending side, it removes PATH (the host is this machine) before passing on anything more.

Why that is deterministic: rsync's sender sends files one at a time in file-list order, and
everything it has written but this proxy has not yet read is bounded (pipes, and ssh's channel
window of a few MB). With a first file much larger than BYTES plus that bound, the sender is still
inside the first file when PATH goes: PATH was listed, and its open fails later with ENOENT, which
is exactly rsync's "file has vanished" (exit 24). No sleep, no race.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading


def main() -> int:
    path, after, *command = sys.argv[1:]
    # rsync hands a remote shell its end of a socketpair, non-blocking; ssh copes with that by polling, and
    # this plain loop needs it blocking (else a full socket loses data mid-write).
    os.set_blocking(0, True)
    os.set_blocking(1, True)
    child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

    def feed() -> None:
        try:
            while chunk := os.read(0, 65536):
                child.stdin.write(chunk)
        except (BrokenPipeError, OSError):
            pass
        finally:
            try:
                child.stdin.close()
            except OSError:
                pass

    threading.Thread(target=feed, daemon=True).start()
    seen, removed = 0, False
    out = sys.stdout.buffer
    while chunk := os.read(child.stdout.fileno(), 65536):
        seen += len(chunk)
        if not removed and seen >= int(after):
            os.remove(path)
            removed = True
        out.write(chunk)
        out.flush()
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())

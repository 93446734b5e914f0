"""Try to connect to a Unix socket as another user; print what happened (one word).

    python tests/_hostile_connect.py SOCKET_PATH UID GID

Run as root by tests/test_security.py: drops to UID/GID first, then connects, and prints
``connected`` or the errno name (``EACCES``, ``ENOENT``, ...). When connected, it also
sends one request and prints the raw reply on a second line.
"""

from __future__ import annotations

import errno
import os
import socket
import sys


def main() -> None:
    path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    connection.settimeout(10)
    try:
        connection.connect(path)
    except OSError as error:
        print(errno.errorcode.get(error.errno or 0, str(error)), flush=True)
        return
    print("connected", flush=True)
    # A msgpack map {"id": 1, "op": "names.pool_stats"}, written by hand: this script needs
    # nothing but the standard library, whoever it runs as. The daemon may refuse a peer
    # of another uid before reading anything, so a failed send is no error here.
    try:
        connection.sendall(b"\x82\xa2id\x01\xa2op\xb0names.pool_stats")
    except OSError:
        pass
    print(repr(connection.recv(65536)), flush=True)


if __name__ == "__main__":
    main()

"""The daemon: the tree served on a Unix socket (msgpack), its client and its status.

    import actors

    with actors.connect("/var/lib/fleet") as client:
        name = client.call("names.checkout_name")

Modules: `_protocol` (frames and encoding), `_gateway` (the socket server), `_client`,
`_daemon` (`python -m actors serve`), `_status`.
"""

from actors.daemon._client import Client, connect

__all__ = ["Client", "connect"]

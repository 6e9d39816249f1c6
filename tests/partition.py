"""A network partition on loopback: a TCP proxy between one process and one dependency.

``Link(port)`` listens on a port of its own and forwards every connection to ``port``. Its
``cut()`` is a link that hangs, the way a dropped route or a changed security group does:
nothing is forwarded either way and no reset is sent, so each side's reads simply wait;
connections opened during the cut are accepted and go nowhere. ``heal()`` forwards again,
what was held back included (as TCP's retransmissions would deliver it), and connects the
connections that arrived meanwhile.

Point a process at ``link.url(url)`` (its Postgres, Redis or broker URL with the port
replaced) and cut its link alone: the other processes keep theirs.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

_TICK_S = 0.05


class Link:
    """A loopback TCP proxy to ``127.0.0.1:port`` that can be cut and healed."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self._target = (host, port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.connections = 0  # accepted so far
        threading.Thread(target=self._accept, name=f"link-{port}", daemon=True).start()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by this link's."""
        parts = urlsplit(url)
        auth = parts.netloc.rpartition("@")[0]
        netloc = f"{auth}@127.0.0.1:{self.port}" if auth else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def cut(self) -> None:
        """Stop forwarding, both ways, on every connection (no reset sent)."""
        self._flowing.clear()

    def heal(self) -> None:
        """Forward again."""
        self._flowing.set()

    @property
    def is_cut(self) -> bool:
        return not self._flowing.is_set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        with contextlib.suppress(OSError):
            self._listener.close()

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        """Connect ``client`` to the target once the link flows, then forward while it
        does; either side's end ends both."""
        with client:
            while not self._flowing.wait(_TICK_S):  # accepted during a cut: held
                if self._closed.is_set():
                    return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                return
            with upstream:
                peer = {client: upstream, upstream: client}
                while not self._closed.is_set():
                    if not self._flowing.wait(_TICK_S):
                        continue  # cut: what either side sends waits in its buffers
                    readable, _, _ = select.select(list(peer), [], [], _TICK_S)
                    for sock in readable:
                        if self.is_cut:
                            break
                        try:
                            data = sock.recv(65536)
                            if not data:
                                return
                            peer[sock].sendall(data)
                        except OSError:
                            return

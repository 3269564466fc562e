"""A TCP proxy between the library and a database server, which a test can turn into a
black hole: from then on it forwards nothing, in either direction, and closes nothing,
so that the server seems to have gone silent (a host that vanished, a network dropping
packets, a pooler whose server hangs) rather than closed.

    proxy = SilentableProxy.for_url(url)
    queue = Queuetopia(repo=proxy.url, ...)
    ...
    proxy.black_hole()
    ...
    proxy.close()
"""

from __future__ import annotations

import selectors
import socket
import threading

import sqlalchemy as sa

_CHUNK = 65536
# The loop looks at its stop flag this often; it is woken by traffic otherwise.
_TICK = 0.05


class SilentableProxy:
    """Forwards TCP connections from a local port to `target` until `black_hole()`."""

    def __init__(self, target: tuple[str, int], url: str) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.setblocking(False)
        port = self._listener.getsockname()[1]
        #: The database URL through this proxy.
        self.url = sa.make_url(url).set(host="127.0.0.1", port=port).render_as_string(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        # Held while a chunk is forwarded: once `black_hole()` has it, nothing more passes.
        self._forwarding = threading.Lock()
        self._silent = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silentable-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> SilentableProxy:
        """A proxy to the server of the database URL `url`."""
        parsed = sa.make_url(url)
        default_port = 5432 if parsed.get_backend_name() == "postgresql" else 3306
        return cls((parsed.host or "127.0.0.1", parsed.port or default_port), url)

    def black_hole(self) -> None:
        """Forward nothing more, accept no connection, close nothing: when this returns,
        no byte crosses the proxy any more."""
        with self._forwarding:
            self._silent = True

    def close(self) -> None:
        """Stop, and close every socket (the clients see their connections closed)."""
        self._stopped.set()
        self._thread.join()
        for sock in [self._listener, *self._peers]:
            sock.close()
        self._selector.close()

    def _run(self) -> None:
        while not self._stopped.is_set():
            for key, _ in self._selector.select(_TICK):
                with self._forwarding:
                    if self._silent:
                        break
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        self._accept()
                    else:
                        self._forward(sock)
            if self._silent:
                # Sockets stay open and unread: the kernel keeps accepting and
                # acknowledging, nothing answers.
                self._stopped.wait()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        client.setblocking(True)
        server = socket.create_connection(self.target)
        for one, other in ((client, server), (server, client)):
            self._peers[one] = other
            self._selector.register(one, selectors.EVENT_READ)

    def _forward(self, sock: socket.socket) -> None:
        other = self._peers[sock]
        try:
            data = sock.recv(_CHUNK)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        for one in (sock, other):  # one side closed: close the other
            self._selector.unregister(one)
            del self._peers[one]
            one.close()

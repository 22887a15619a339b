"""The proxy's listening socket and accept thread, and refusing new connections for a while."""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Optional

from s3io.testing.faultproxy import _http

log = logging.getLogger(__name__)

_LISTEN_BACKLOG = 128
REFUSAL_MODES = ("unlisten", "close", "reset")


class Listener:
    """Accepts client connections on a free port and hands each to ``on_accept``.

    While a refusal is on (:meth:`refuse`), new connections are refused
    instead and counted with ``on_refused``.

    Parameters
    ----------
    host : str
        Address to listen on.
    on_accept : callable
        ``on_accept(sock)``: serve an accepted connection (called in the accept thread).
    on_refused : callable
        ``on_refused()``: a connection was accepted and closed or reset at once.
    """

    def __init__(self, host: str, on_accept: Callable[[socket.socket], None], on_refused: Callable[[], None]) -> None:
        self.host = host
        self.port: Optional[int] = None
        self.stopping = threading.Event()  # set by stop(); connections watch it too
        self._on_accept = on_accept
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # refusal state changes, stop
        self._sock: Optional[socket.socket] = None
        self._listening = False
        self._thread: Optional[threading.Thread] = None
        self._refuse_until = 0.0
        self._refuse_how = "unlisten"
        self._refuse_close_idle = False

    @property
    def running(self) -> bool:
        return self._sock is not None

    def start(self) -> int:
        """Listen on a free port and start the accept thread; returns the port."""
        self.stopping.clear()
        self._sock = self._bind()
        self.port = self._sock.getsockname()[1]
        self._sock.listen(_LISTEN_BACKLOG)
        self._listening = True
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy-%d-accept" % self.port,
                                        daemon=True)
        self._thread.start()
        return self.port

    def _bind(self) -> socket.socket:
        # Bound to an explicit port (not 0) so that the port stays ours while
        # refuse() stops listening: Linux releases an auto-assigned port when
        # a listening socket is shut down.
        last_error: Optional[OSError] = None
        for _ in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind((self.host, 0))
                port = probe.getsockname()[1]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, port))
                return sock
            except OSError as exc:  # taken in between: try another
                sock.close()
                last_error = exc
        raise RuntimeError("FaultProxy could not bind a port on %s: %s" % (self.host, last_error))

    def stop(self) -> None:
        """Set ``stopping``, close the listening socket and join the accept thread."""
        with self._wake:
            self.stopping.set()
            self._wake.notify_all()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes accept()
        except OSError:
            pass
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        _http.close(self._sock)
        self._sock = None
        self._listening = False
        self.port = None

    def refuse(self, seconds: float, how: str = "unlisten", close_idle: bool = True) -> None:
        """Refuse new connections for ``seconds`` (0 ends a refusal now); see ``FaultProxy.refuse_connections``."""
        with self._wake:
            self._refuse_until = time.monotonic() + seconds if seconds > 0 else 0.0
            self._refuse_how = how
            self._refuse_close_idle = bool(close_idle)
            # Switch listening here, not in the accept thread, so that the new
            # state holds when this returns.
            if how == "unlisten" and seconds > 0:
                self._set_listening(False)
            elif seconds == 0 or how != "unlisten":
                self._set_listening(True)
            self._wake.notify_all()

    def end_refusal(self) -> None:
        """Accept connections again now."""
        with self._wake:
            self._refuse_until = 0.0
            self._set_listening(True)
            self._wake.notify_all()

    def closing_idle(self) -> bool:
        """True while a refusal asks kept-alive connections to close when idle."""
        with self._lock:
            return self._refuse_close_idle and time.monotonic() < self._refuse_until

    def _accept_loop(self) -> None:
        listener = self._sock
        while not self.stopping.is_set():
            with self._wake:
                if self._refuse_how == "unlisten" and time.monotonic() < self._refuse_until:
                    self._set_listening(False)
                    self._wake.wait(self._refuse_until - time.monotonic())
                    continue
                if not self._set_listening(True):  # pragma: no cover
                    self._wake.wait(0.1)
                    continue
            try:
                sock, _ = listener.accept()
            except OSError:
                if self.stopping.is_set():
                    return
                with self._wake:  # woken by refuse(); loop re-reads the state
                    if self._listening and not (self._refuse_how == "unlisten"
                                                and time.monotonic() < self._refuse_until):
                        self._wake.wait(0.01)
                continue
            self._hand_over(sock)

    def _set_listening(self, on: bool) -> bool:
        """Start or stop listening (caller holds the lock); returns whether it is in that state.

        Shut down a listening socket exactly once per listen(): on Linux a
        shutdown() of a socket that is not listening marks it for good, and
        every connection it accepts later reads EOF at once.
        """
        if self._sock is None or self.stopping.is_set():
            return False
        if on and not self._listening:
            try:
                self._sock.listen(_LISTEN_BACKLOG)
            except OSError as exc:  # pragma: no cover
                log.error("faultproxy %d: cannot listen again: %r", self.port, exc)
                return False
            self._listening = True
            log.debug("faultproxy %d: listening again", self.port)
        elif not on and self._listening:
            self._listening = False
            try:  # connects now get "connection refused"; accept() wakes with EINVAL
                self._sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            log.debug("faultproxy %d: not listening", self.port)
        return True

    def _hand_over(self, sock: socket.socket) -> None:
        with self._lock:
            refusing = time.monotonic() < self._refuse_until or self.stopping.is_set()
            how = self._refuse_how
        if refusing:
            self._on_refused()
            log.debug("faultproxy %d: refused a connection (%s)", self.port, how)
            _http.close(sock, reset=(how == "reset"))
            return
        self._on_accept(sock)

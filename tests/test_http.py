"""s3io's small HTTP/1.1 client against a scripted loopback server: framing, keep-alive, broken answers."""
import http.client
import socket
import threading

import pytest

from s3io._http import ConnectionPool, Origin, ResponseError


class ScriptedServer:
    """Accepts connections on loopback; each is served by the next script, a list of steps.

    A step is ``bytes`` (sent as is after one request head was read), ``"close"``
    (close the connection) or ``"read"`` (read one request head, answer nothing).
    """

    def __init__(self, *scripts):
        self._scripts = list(scripts)
        self.requests = []
        self.connections = 0
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._serve, daemon=True)]
        self._threads[0].start()

    def _serve(self):
        while self._scripts:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            script = self._scripts.pop(0)
            thread = threading.Thread(target=self._run, args=(conn, script), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _read_head(self, conn, buffered):
        while b"\r\n\r\n" not in buffered:
            more = conn.recv(65536)
            if not more:
                return None, b""
            buffered += more
        head, _, rest = buffered.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", 0))
        while len(rest) < length:
            rest += conn.recv(65536)
        self.requests.append((lines[0], headers, rest[:length]))
        return rest[length:], rest[:length]

    def _run(self, conn, script):
        buffered = b""
        with conn:
            for step in script:
                if step == "close":
                    return
                buffered, _ = self._read_head(conn, buffered)
                if buffered is None:
                    return
                if step != "read":
                    conn.sendall(step)

    def pool(self):
        return ConnectionPool(Origin(f"http://127.0.0.1:{self.port}"), 5.0, 5.0)

    def close(self):
        self._listener.close()
        for thread in self._threads:
            thread.join(5)


@pytest.fixture
def serve():
    servers = []

    def start(*scripts):
        server = ScriptedServer(*scripts)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def _ok(body, extra=b""):
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def _read_all(response, size=7):
    out = bytearray()
    view = memoryview(bytearray(size))
    while n := response.readinto(view):
        out += view[:n]
    return bytes(out)


def test_keep_alive_reuses_one_connection_and_sends_one_head(serve):
    server = serve([_ok(b"first"), _ok(b"second")])
    pool = server.pool()
    for expected in (b"first", b"second"):
        response = pool.request("GET", "/b/k%20x", {"range": "bytes=0-9"})
        assert response.status == 200 and _read_all(response) == expected and response.complete
    assert server.connections == 1
    line, headers, _ = server.requests[0]
    assert line == "GET /b/k%20x HTTP/1.1"
    assert headers["host"] == f"127.0.0.1:{server.port}" and headers["range"] == "bytes=0-9"
    pool.close()


def test_a_body_is_read_straight_into_the_callers_memory(serve):
    body = bytes(range(256)) * 1000
    server = serve([_ok(body)])
    response = server.pool().request("GET", "/k", {})
    dest = bytearray(len(body))
    view = memoryview(dest)
    got = 0
    while got < len(dest):
        got += response.readinto(view[got:])
    assert dest == body and response.readinto(memoryview(bytearray(10))) == 0


def test_chunked_bodies_are_decoded(serve):
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: 1\r\n\r\n"
    server = serve([answer, _ok(b"next")])
    pool = server.pool()
    response = pool.request("GET", "/k", {})
    assert response.content_length is None
    assert _read_all(response, size=3) == b"hello world"
    assert _read_all(pool.request("GET", "/k", {})) == b"next"
    assert server.connections == 1  # the chunked answer left the connection reusable


def test_a_put_body_is_sent_with_its_length(serve):
    server = serve([_ok(b""), _ok(b"")])
    pool = server.pool()
    small, large = b"x" * 10, bytes(200_000)
    for body in (small, large):
        assert pool.request("PUT", "/k", {}, body).status == 200
    assert [(r[1]["content-length"], r[2]) for r in server.requests] == [("10", small), ("200000", large)]


def test_head_answers_have_no_body_even_with_a_length(serve):
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\nETag: \"e\"\r\n\r\n", _ok(b"after")])
    pool = server.pool()
    response = pool.request("HEAD", "/k", {})
    assert response.headers["content-length"] == "12345" and response.headers["etag"] == '"e"'
    assert _read_all(pool.request("GET", "/k", {})) == b"after"
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_transparently(serve):
    server = serve([_ok(b"one"), "close"], [_ok(b"two")])
    pool = server.pool()
    assert _read_all(pool.request("GET", "/k", {})) == b"one"
    # The server closed the idle connection: the request goes out again on a new one.
    assert _read_all(pool.request("GET", "/k", {})) == b"two"
    assert server.connections == 2


def test_connection_close_and_http_1_0_answers_are_not_reused(serve):
    server = serve([_ok(b"a", b"Connection: close\r\n")], [b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nb"], [_ok(b"c")])
    pool = server.pool()
    for expected in (b"a", b"b", b"c"):
        assert _read_all(pool.request("GET", "/k", {})) == expected
    assert server.connections == 3


def test_a_body_cut_short_raises_incomplete_read(serve):
    server = serve([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this", "close"])
    response = server.pool().request("GET", "/k", {})
    with pytest.raises(http.client.IncompleteRead):
        _read_all(response)


def test_a_fresh_connection_closed_without_an_answer_is_an_error(serve):
    server = serve(["read", "close"])
    with pytest.raises(http.client.RemoteDisconnected):
        server.pool().request("GET", "/k", {})


def test_a_garbled_status_line_is_a_response_error(serve):
    server = serve([b"HTTP/9 banana\r\n\r\n"])
    with pytest.raises(ResponseError, match="bad status line"):
        server.pool().request("GET", "/k", {})


def test_interim_100_continue_is_skipped(serve):
    server = serve([b"HTTP/1.1 100 Continue\r\n\r\n" + _ok(b"done")])
    response = server.pool().request("PUT", "/k", {}, b"body")
    assert response.status == 200 and _read_all(response) == b"done"


def test_origin_host_header_and_bad_schemes():
    assert Origin("http://127.0.0.1:80").host_header == "127.0.0.1"
    assert Origin("https://s3.us-east-1.amazonaws.com").port == 443
    assert Origin("http://[::1]:9000").host_header == "[::1]:9000"
    with pytest.raises(ValueError, match="ftp://x"):
        Origin("ftp://x")

"""A hostile HTTP server for the adversarial handler tests: reads one request, then misbehaves as its path
(or the job's payload.behave, on /by-payload) says."""

from __future__ import annotations

import json
import socket
import socketserver
import struct
import threading
import urllib.parse

SECRET = "p@ss/w0rd:with%25 spaces&plus+=semi;colon?x#frag"


class HostileHandler(socketserver.BaseRequestHandler):
    """Reads one request, then misbehaves as its path says (/hang, /trickle, /huge, /reset, /redirect, …)."""

    server: HostileServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"),
                      0)
        while len(body) < length:
            body += sock.recv(65536)
        path = lines[0].split()[1]
        if path == "/by-payload":  # what to do is the job's payload.behave
            path = json.loads(body)["payload"]["behave"]
        self.server.seen.append(path)
        stop = self.server.stop
        if path == "/never":
            stop.wait(60)
        elif path == "/hang":  # headers, then the promised body never comes
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            stop.wait(60)
        elif path == "/trickle":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            while not stop.wait(0.05):
                try:
                    sock.sendall(b"1\r\n \r\n")
                except OSError:
                    return
        elif path.startswith("/huge"):
            mib = int(path.rsplit("/", 1)[1])
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {mib << 20}\r\n\r\n".encode())
            block = b" " * (1 << 20)
            try:
                for _ in range(mib):
                    if stop.is_set():
                        return
                    sock.sendall(block)
            except OSError:
                return
        elif path == "/reset":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n{\"a\": ")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        elif path == "/redirect":
            where = f"http://127.0.0.2:{self.server.server_address[1]}/elsewhere"
            sock.sendall(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {where}\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
        elif path == "/ok":
            sock.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{"ok":true}')
            self.handle()  # keep-alive: the next request on this connection
        elif path == "/headers-forever":
            sock.sendall(b"HTTP/1.1 200 OK\r\n")
            while not stop.is_set():
                try:
                    sock.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
                except OSError:
                    return
        elif path == "/notjson":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
        elif path == "/retry":
            value = json.loads(body)["payload"]["retryAfter"]
            sock.sendall(f"HTTP/1.1 503 Busy\r\nRetry-After: {value}\r\nContent-Length: 4\r\n"
                         "Connection: close\r\n\r\nbusy".encode())
        elif path.startswith("/secret/"):
            pad = int(path.rsplit("/", 1)[1])
            said = ("e" * pad + SECRET + " and " + urllib.parse.quote(SECRET, safe="")).encode()
            sock.sendall(b"HTTP/1.1 400 Bad\r\nContent-Length: " + str(len(said)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + said)
        elif path == "/result":
            said = json.dumps({"token": SECRET, SECRET: [SECRET]}).encode()
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + str(len(said)).encode()
                         + b"\r\nConnection: close\r\n\r\n" + said)


class HostileServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("0.0.0.0", 0), HostileHandler)
        self.seen: list[str] = []
        self.stop = threading.Event()

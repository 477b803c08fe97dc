# The demo's outside peer: an HTTP server and a UDP echo server that answer
# each client with the source address and port they saw it come from.
# Usage: server.py ADDRESS TCP_PORT UDP_PORT. Prints "ready" on stdout once
# both listen; exits when its stdin, a pipe from the demo, closes (the demo
# is over, however it ended). Without a pipe, the demo's `timeout` ends it.
import http.server
import os
import socket
import stat
import sys
import threading
import time

address, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def log(text):
    print(f"    [outside peer] {text}", file=sys.stderr, flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        host, port = self.client_address
        log(f"HTTP GET from {host}:{port}")
        body = f"{host}:{port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


def udp_echo(sock):
    while True:
        data, (host, port) = sock.recvfrom(2048)
        log(f"UDP datagram from {host}:{port}")
        sock.sendto(f"{host}:{port}\n".encode(), (host, port))


http_server = http.server.HTTPServer((address, tcp_port), Handler)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((address, udp_port))
threading.Thread(target=http_server.serve_forever, daemon=True).start()
threading.Thread(target=udp_echo, args=(udp,), daemon=True).start()
log(f"listening on {address}, TCP port {tcp_port} (HTTP) and UDP port {udp_port} (echo)")
print("ready", flush=True)
if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode):
    sys.stdin.read()
else:
    while True:
        time.sleep(3600)
os._exit(0)

# The demo's container side: one HTTP request and one UDP datagram to the
# outside peer, printing the source address:port the container used and the
# one the peer saw. Usage: client.py ADDRESS TCP_PORT UDP_PORT.
# Exits 1 if either fails, or if the peer saw the container's own address
# (no masquerade).
import http.client
import socket
import sys

address, tcp_port, udp_port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def http_get():
    conn = http.client.HTTPConnection(address, tcp_port, timeout=5)
    conn.connect()
    local = conn.sock.getsockname()
    conn.request("GET", "/")
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP status {response.status}")
    return local, response.read().decode().strip()


def udp_echo():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect((address, udp_port))
    local = sock.getsockname()
    sock.send(b"hello")
    return local, sock.recv(2048).decode().strip()


ok = True
for name, exchange, port in (("TCP (HTTP GET)", http_get, tcp_port), ("UDP (echo)", udp_echo, udp_port)):
    try:
        (host, local_port), seen = exchange()
    except Exception as e:
        print(f"  {name:15} to {address}:{port}: FAILED: {e}")
        ok = False
        continue
    print(f"  {name:15} sent from {host}:{local_port}, the peer saw it come from {seen}")
    if seen.split(":")[0] == host:
        print(f"  {name:15} FAILED: the peer saw the container's own address (not masqueraded)")
        ok = False
sys.exit(0 if ok else 1)

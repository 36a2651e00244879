#!/usr/bin/env python3
"""Long-lived TCP connections with a heartbeat, for the stateful failover suite (stateful.sh).

  heartbeat.py serve PORT
      An echo server (one thread, select): what a backend behind the VIP runs.
  heartbeat.py client HOST PORT[,PORT...] N STATUS_FILE
      Opens N connections to HOST, spread over the PORTs, and sends a numbered line on each every 100 ms, reading
      the echoes. Every 100 ms it rewrites STATUS_FILE with one line:
          connected=N flowing=F dead=D max_stall_ms=S
      flowing: connections whose last echo came less than 500 ms ago; dead: connections that
      saw a reset, an end of stream or a wrong echo (a connection never comes back once dead);
      max_stall_ms: the longest time any live connection went without an echo. On SIGTERM it
      writes the final line and exits.

Standard library only: the suite runs it inside network namespaces with the system python3.
"""

import os
import selectors
import signal
import socket
import sys
import time

PERIOD = 0.1
FLOWING = 0.5


def serve(port):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", port))
    listener.listen(256)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is listener:
                conn, _ = listener.accept()
                sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
                if data:
                    conn.sendall(data)
                    continue
            except OSError:
                pass
            sel.unregister(conn)
            conn.close()


class Conn:
    def __init__(self, sock, now):
        self.sock = sock
        self.sent = 0
        self.expected = b""  # what the echoes must spell, in order
        self.last_echo = now
        self.max_stall = 0.0
        self.dead = None


def client(host, ports, n, status_file):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    conns = []
    for i in range(n):
        s = socket.create_connection((host, ports[i % len(ports)]), timeout=5)
        s.setblocking(False)
        conns.append(Conn(s, time.monotonic()))
    sel = selectors.DefaultSelector()
    for c in conns:
        sel.register(c.sock, selectors.EVENT_READ, c)
    next_beat = time.monotonic()

    def write_status():
        now = time.monotonic()
        live = [c for c in conns if c.dead is None]
        flowing = sum(1 for c in live if now - c.last_echo < FLOWING)
        stall = max([max(c.max_stall, now - c.last_echo) for c in live] or [0.0])
        line = "connected=%d flowing=%d dead=%d max_stall_ms=%d\n" % (
            n, flowing, n - len(live), stall * 1000)
        tmp = status_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(line)
            for c in conns:
                if c.dead:
                    f.write("dead: %s\n" % c.dead)
        os.replace(tmp, status_file)

    while not stop:
        now = time.monotonic()
        if now >= next_beat:
            next_beat = now + PERIOD
            for c in conns:
                if c.dead is None:
                    c.sent += 1
                    line = b"%d\n" % c.sent
                    try:
                        # Small lines never fill the send buffer in the test's few seconds of
                        # outage; if one did, the data would be lost: call it dead.
                        if c.sock.send(line) != len(line):
                            c.dead = "short send"
                        c.expected += line
                    except OSError as e:
                        c.dead = "send: %s" % e
            write_status()
        for key, _ in sel.select(timeout=max(0.0, next_beat - time.monotonic())):
            c = key.data
            if c.dead is not None:
                continue
            try:
                data = c.sock.recv(65536)
            except OSError as e:
                c.dead = "recv: %s" % e
                sel.unregister(c.sock)
                continue
            if not data:
                c.dead = "end of stream"
                sel.unregister(c.sock)
                continue
            if not c.expected.startswith(data):
                c.dead = "wrong echo"
                continue
            c.expected = c.expected[len(data):]
            t = time.monotonic()
            c.max_stall = max(c.max_stall, t - c.last_echo)
            c.last_echo = t
    write_status()


def main(argv):
    if len(argv) == 3 and argv[1] == "serve":
        serve(int(argv[2]))
    elif len(argv) == 6 and argv[1] == "client":
        client(argv[2], [int(p) for p in argv[3].split(",")], int(argv[4]), argv[5])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

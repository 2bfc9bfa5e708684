#!/usr/bin/env bash
# Why dsm's control messages stay on TCP when pages move by RDMA: the round trip of a small
# message (64 bytes) between two processes sharing rxe0, over RC SEND/RECV
# (ibv_rc_pingpong, busy-polling C) and over TCP loopback (TCP_NODELAY, blocking sockets, two
# processes, Python: its interpreter overhead counts against TCP). Run where rxe0 is up:
#   bash scripts/soft-roce-setup.sh guest bash scripts/rig/control-rtt.sh
set -euo pipefail
iters=${1:-1000}
port=18515
echo "== RC SEND/RECV (ibv_rc_pingpong -g 1 -s 64 -n $iters)"
ibv_rc_pingpong -d rxe0 -g 1 -s 64 -n "$iters" -p "$port" >/dev/null 2>&1 &
server=$!
sleep 1
ibv_rc_pingpong -d rxe0 -g 1 -s 64 -n "$iters" -p "$port" localhost 2>&1 | grep -E 'usec/iter'
wait "$server" || true
echo "== TCP loopback (64-byte ping-pong)"
/usr/bin/python3 - "$iters" <<'PY'
import os, socket, sys, time
n = int(sys.argv[1])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
if os.fork() == 0:  # the echoing peer: another process, like another dsm node
    c, _ = srv.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for _ in range(n):
        buf = b""
        while len(buf) < 64: buf += c.recv(64 - len(buf))
        c.sendall(buf)
    os._exit(0)
s = socket.create_connection(srv.getsockname()); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b"x" * 64; times = []
for _ in range(n):
    t = time.perf_counter(); s.sendall(msg); got = b""
    while len(got) < 64: got += s.recv(64 - len(got))
    times.append(time.perf_counter() - t)
os.wait()
times.sort()
print(f"{n} iters: median {times[n // 2] * 1e6:.1f} us, p99 {times[n * 99 // 100] * 1e6:.1f} us per round trip")
PY

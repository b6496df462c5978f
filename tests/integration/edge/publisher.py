"""Chaos-test publisher (run as its own process): a numbered QoS 1 stream from one device.

    python publisher.py PORT DEVICE SECRET ACKED_FILE

Publishes {"v":1,"seq":N,"metrics":{"n":N}} for N = 1, 2, 3, ... with at most 100 messages
unacknowledged, and appends N to ACKED_FILE when the broker's PUBACK for N arrived. paho-mqtt
reconnects by itself when the gateway is killed and resends unacknowledged messages (DUP set,
same bytes). A line on stdin stops it: it publishes nothing new, waits until everything it sent is
acknowledged, prints "done LAST" and exits.
"""

from __future__ import annotations

import collections
import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def main() -> int:
    port, device, secret, acked_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    acks: collections.deque[int] = collections.deque()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device)
    c.username_pw_set(device, secret)
    c.reconnect_delay_set(0.05, 0.3)
    c.on_publish = lambda client, userdata, mid, reason, props: acks.append(mid)
    c.connect_async("127.0.0.1", port, keepalive=10)
    c.loop_start()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()

    outstanding: dict[int, int] = {}
    seq = 0
    with open(acked_path, "a") as out:

        def drain() -> None:
            while acks:
                out.write(f"{outstanding.pop(acks.popleft())}\n")
            out.flush()

        while not stop.is_set():
            drain()
            if len(outstanding) >= 100:
                time.sleep(0.002)
                continue
            seq += 1
            info = c.publish(f"pulse/{device}/telemetry", json.dumps({"v": 1, "seq": seq, "metrics": {"n": seq}}), qos=1)
            outstanding[info.mid] = seq
        deadline = time.monotonic() + 60
        while outstanding and time.monotonic() < deadline:
            drain()
            time.sleep(0.01)
        drain()
    c.disconnect()
    c.loop_stop()
    print(f"done {seq} unacknowledged {len(outstanding)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

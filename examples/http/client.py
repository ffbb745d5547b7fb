"""A short intentd HTTP/JSON client with `requests` (pip install requests).

    python examples/http/client.py [BASE_URL] [TOKEN]

Classifies a message, reports a member join, sends feedback, then reads the bot's proactive
sends (the merged welcome) from the Server-Sent Events stream for a few seconds.
Defaults: http://127.0.0.1:8080 and the shipped demo token.
"""

import json
import sys
import time

import requests

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
TOKEN = sys.argv[2] if len(sys.argv) > 2 else "dev-demo-token"
BOT = "demo"
S = requests.Session()
S.headers["Authorization"] = f"Bearer {TOKEN}"


def call(path, body):
    r = S.post(f"{BASE}{path}", json=body, timeout=10)
    if r.status_code != 200:
        # Every error is {"error": {"code", "message", "field"}}; 429 carries Retry-After.
        e = r.json()["error"]
        raise SystemExit(f"{path}: HTTP {r.status_code} {e['code']}: {e['message']} (field {e['field']})")
    return r.json()


def main():
    msg_id = f"example-{int(time.time() * 1000)}"
    r = call("/v1/classify", {
        "bot_id": BOT, "chat_id": "g-example", "chat_name": "示例群", "message_id": msg_id,
        "text": "我要退款，怎么操作", "user": {"id": "u1", "nickname": "小王"},
    })
    reply = (r["reply"] or {}).get("text", "")
    print(f"classify: {r['intent']} {r['confidence']:.2f} -> {r['action']} ({r['reason']}) {reply}")

    # A retry with the same message_id gets the first answer back (replayed: true).
    again = call("/v1/classify", {
        "bot_id": BOT, "chat_id": "g-example", "chat_name": "示例群", "message_id": msg_id,
        "text": "我要退款，怎么操作", "user": {"id": "u1", "nickname": "小王"},
    })
    print(f"retry: replayed={again['replayed']}")

    d = call("/v1/events", {
        "bot_id": BOT, "chat_id": "g-example", "chat_name": "示例群", "type": "MEMBER_JOINED",
        "user": {"id": "u2", "nickname": "小李"}, "event_id": f"join-{msg_id}",
    })
    print(f"event: {d['action']} ({d['reason']}), welcome in {d['send_after_ms']} ms")

    f = call("/v1/feedback", {"bot_id": BOT, "message_id": msg_id, "kind": "RESOLVED"})
    print(f"feedback: recorded={f['recorded']}")

    # Proactive sends (welcomes, schedules) as Server-Sent Events; read for a few seconds.
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    deadline = time.time() + seconds
    with S.get(f"{BASE}/v1/outbound", params={"bot_id": BOT, "chat_ids": "g-example"},
               stream=True, timeout=(5, seconds)) as stream:
        event = None
        try:
            for line in stream.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "outbound":
                    o = json.loads(line[5:])
                    print(f"outbound: {o['kind']} to {o['chat_id']}: {o['reply']['text']}")
                if time.time() > deadline:
                    break
        except requests.exceptions.ConnectionError:
            pass  # the read timeout ended the demo
    print("done")


if __name__ == "__main__":
    main()

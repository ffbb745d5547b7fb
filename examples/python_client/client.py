#!/usr/bin/env python3
"""Example intentd client for a chat-bot front end.

Shows every call a bot needs on the inbound path:

  1. wait until the server reports SERVING (standard grpc.health.v1 health checking),
  2. Classify each inbound message and act on the answer (reply / clarify / hand off / ...),
  3. ClassifyBatch for many messages in one round trip,
  4. HandleEvent for group events (here: a member joined),
  5. Feedback once the bot knows how a reply worked out (here: RESOLVED),
  6. how errors come back: a grpc.RpcError carrying a status code and a message that names
     the offending field (an empty text -> INVALID_ARGUMENT).

Usage:
  python3 client.py                         # built-in demo messages
  python3 client.py "怎么退款" "发票怎么开"   # your own messages
  python3 client.py --json > out.json       # one JSON document, for scripts

Address and token come from --addr / --token, else INTENTD_ADDR / INTENTD_TOKEN, else the
local defaults of config/intentd.yml (127.0.0.1:50051, bot "demo" with token "dev-demo-token").
Run ./generate.sh once first: it writes the stubs imported below into ./intentd/.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

try:
    from intentd.v1 import intentd_pb2 as pb
    from intentd.v1 import intentd_pb2_grpc as pb_grpc
except ImportError as e:  # the stubs are generated, not committed
    sys.exit(f"cannot import the generated stubs ({e}); run ./generate.sh first")

DEFAULT_ADDR = "127.0.0.1:50051"
DEFAULT_TOKEN = "dev-demo-token"

# One message per kind of outcome: a reply from the model, a keyword rule that hands off to a
# human, and a vague message that gets a clarifying question.
DEMO_TEXTS = [
    "我买的衣服不合适，想退货退款，钱多久能退回来？",
    "这个券怎么用啊 转人工",
    "嗯嗯那个就是那个吧",
]
BATCH_TEXTS = ["怎么退款", "谢谢你啊", "发票怎么开"]


def to_dict(message) -> dict:
    """Protobuf message -> plain dict with the .proto field names and enum names.

    Fields left at their default (0, "", false) are included so every key is always present.
    As in the proto3 JSON mapping, 64-bit integers (send_after_ms, timings) come out as strings.
    """
    return json_format.MessageToDict(
        message,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
    )


def rpc_error(call: str, err: grpc.RpcError, **context) -> dict:
    """The two things to look at in a failed call: the status code and its message."""
    return {"call": call, **context, "code": err.code().name, "details": err.details()}


class IntentdClient:
    """A thin wrapper that adds the bearer token and a deadline to every call.

    Share one instance (one channel) for the life of the bot: channels are expensive to open,
    cheap to reuse, reconnect by themselves and carry many concurrent calls.
    """

    def __init__(self, addr: str, token: str, bot_id: str, timeout_s: float):
        self.bot_id = bot_id
        self.timeout_s = timeout_s
        self.channel = grpc.insecure_channel(addr)  # grpc.secure_channel(...) when TLS is on
        self.intents = pb_grpc.IntentServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        # Every IntentService call must carry `authorization: Bearer <token>`; without it the
        # server answers UNAUTHENTICATED, and a token only acts for its own bot_id.
        self.metadata = (("authorization", f"Bearer {token}"),)

    def close(self) -> None:
        self.channel.close()

    def wait_serving(self, within_s: float) -> str:
        """Polls grpc.health.v1 until SERVING. The port opens before the model has loaded
        (NOT_SERVING, rule-only answers), so a bot should wait before sending traffic."""
        deadline = time.monotonic() + within_s
        status = "UNKNOWN"
        while True:
            try:
                resp = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return status
            except grpc.RpcError as err:  # not listening yet: UNAVAILABLE
                status = err.code().name
            if time.monotonic() > deadline:
                raise TimeoutError(f"intentd not SERVING after {within_s:g} s (last status: {status})")
            time.sleep(0.2)

    def request(self, text: str, message_id: str, chat_id: str, user_id: str) -> pb.ClassifyRequest:
        """A ClassifyRequest as a WeChat group bot would fill it in."""
        return pb.ClassifyRequest(
            bot_id=self.bot_id,
            chat_id=chat_id,
            chat_name="测试群",  # fills {group_name} in reply templates
            message_id=message_id,  # unique per message: Feedback refers to it
            text=text,
            sent_at_ms=0,  # 0 = "now"; pass the chat platform's timestamp when you have it
            user=pb.User(id=user_id, nickname="小王", tags=["new"], city="上海", vip_level=0),
        )

    def classify(self, req: pb.ClassifyRequest) -> pb.ClassifyResponse:
        return self.intents.Classify(req, metadata=self.metadata, timeout=self.timeout_s)

    def classify_batch(self, reqs: list[pb.ClassifyRequest]) -> pb.ClassifyBatchResponse:
        batch = pb.ClassifyBatchRequest(requests=reqs)
        return self.intents.ClassifyBatch(batch, metadata=self.metadata, timeout=self.timeout_s)

    def member_joined(self, chat_id: str, user_id: str, nickname: str) -> pb.Decision:
        event = pb.Event(
            bot_id=self.bot_id,
            chat_id=chat_id,
            chat_name="测试群",
            type=pb.MEMBER_JOINED,
            user=pb.User(id=user_id, nickname=nickname),
            event_id=f"join-{uuid.uuid4().hex[:12]}",
        )
        return self.intents.HandleEvent(event, metadata=self.metadata, timeout=self.timeout_s)

    def feedback(self, message_id: str, variant_id: str, kind: int) -> pb.FeedbackResponse:
        req = pb.FeedbackRequest(bot_id=self.bot_id, message_id=message_id, kind=kind, variant_id=variant_id)
        return self.intents.Feedback(req, metadata=self.metadata, timeout=self.timeout_s)


# ---- human-readable output -------------------------------------------------------------------


def show_classification(text: str, r: pb.ClassifyResponse) -> None:
    name = r.ranking[0].display_name if r.ranking and r.ranking[0].intent == r.intent else ""
    print(f"> {text}")
    print(f"  intent     {r.intent or '-'} {f'({name}) ' if name else ''}"
          f"confidence {r.confidence:.3f}  source {pb.Source.Name(r.source)}")
    if r.matched_terms:
        print(f"  matched    {', '.join(r.matched_terms)}")
    print(f"  action     {pb.Action.Name(r.action)}  reason {r.reason or '-'}  send_after_ms {r.send_after_ms}")
    for notice in r.notices:  # sent before the reply (e.g. the automation disclosure)
        print(f"  notice     {notice}")
    if r.HasField("reply"):
        print(f"  reply      {r.reply.text}")
        print(f"  variant    {r.reply.variant_id}  style {r.reply.style or '-'}"
              f"{f'  experiment {r.reply.experiment}' if r.reply.experiment else ''}")
    else:
        print("  reply      (none: the bot stays silent)")
    t = r.timings
    print(f"  timings    tokenize {t.tokenize_us} us, queue {t.queue_us} us, "
          f"inference {t.inference_us} us, total {t.total_us} us")
    print(f"  model      {r.model_version or '(rules only)'}  truncated {r.truncated}  recorded {r.recorded}")


def show_decision(d: pb.Decision) -> None:
    print(f"  action     {pb.Action.Name(d.action)}  reason {d.reason or '-'}  send_after_ms {d.send_after_ms}")
    if d.HasField("reply"):
        print(f"  reply      {d.reply.text}")
        print(f"  variant    {d.reply.variant_id}")
    else:
        # A queued or merged welcome is delivered later on the Subscribe stream.
        print("  reply      (none now: see send_after_ms / Subscribe)")
    if d.merged_user_ids:
        print(f"  merged     {', '.join(d.merged_user_ids)}")


def show_error(e: dict) -> None:
    print(f"  error      {e['code']}: {e['details']}")


# ---- the demo --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    human = not args.json
    out: dict = {"addr": args.addr, "errors": []}
    failed = False
    client = IntentdClient(args.addr, args.token, args.bot, args.timeout)
    try:
        try:
            out["health"] = client.wait_serving(args.wait)
        except TimeoutError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if human:
            print(f"intentd at {args.addr}: {out['health']}\n")
            print("== Classify")

        # 1. Classify, one message per call: the usual inbound path.
        run_id = uuid.uuid4().hex[:8]  # message ids must be unique across runs
        out["classify"] = []
        for i, text in enumerate(args.texts or DEMO_TEXTS):
            req = client.request(text, f"py-{run_id}-{i}", args.chat, f"user-{i}")
            try:
                resp = client.classify(req)
            except grpc.RpcError as err:
                failed = True
                e = rpc_error("Classify", err, text=text)
                out["errors"].append(e)
                if human:
                    print(f"> {text}")
                    show_error(e)
                continue
            out["classify"].append({"text": text, "response": to_dict(resp)})
            if human:
                show_classification(text, resp)

        if not args.classify_only:
            demo_extras(client, run_id, args, out, human)
    finally:
        client.close()

    if args.json:
        json.dump(out, sys.stdout, ensure_ascii=False, indent=2)
        print()
    return 1 if failed else 0


def demo_extras(client: IntentdClient, run_id: str, args: argparse.Namespace, out: dict, human: bool) -> None:
    """ClassifyBatch, HandleEvent, Feedback and a deliberate INVALID_ARGUMENT."""
    # 2. ClassifyBatch: answers come back in request order (match them by message_id). A batch
    #    may mix groups; here each message comes from its own group, so the playbook's per-group
    #    spacing (at most so many bot messages per group and minute) does not silence them.
    reqs = [client.request(t, f"py-{run_id}-b{i}", f"{args.chat}-b{i}", f"user-b{i}") for i, t in enumerate(BATCH_TEXTS)]
    if human:
        print("\n== ClassifyBatch")
    try:
        batch = client.classify_batch(reqs)
        out["batch"] = to_dict(batch)
        if human:
            for req, r in zip(reqs, batch.responses):
                print(f"  {r.message_id}  {req.text}  ->  {r.intent} {r.confidence:.3f} "
                      f"{pb.Source.Name(r.source)} {pb.Action.Name(r.action)} ({r.reason or '-'})")
    except grpc.RpcError as err:
        out["errors"].append(rpc_error("ClassifyBatch", err))
        if human:
            show_error(out["errors"][-1])

    # 3. HandleEvent: a member joined the group. Welcomes for joins close together are merged,
    #    so the welcome may come later through Subscribe (the decision says when and why).
    if human:
        print("\n== HandleEvent(MEMBER_JOINED)")
    try:
        decision = client.member_joined(args.chat, f"newcomer-{run_id}", "小李")
        out["event"] = to_dict(decision)
        if human:
            show_decision(decision)
    except grpc.RpcError as err:
        out["errors"].append(rpc_error("HandleEvent", err))
        if human:
            show_error(out["errors"][-1])

    # 4. Feedback: the user said the first reply solved it. Keyed by message id; pass the
    #    variant id so the A/B report credits the reply variant that was shown.
    answered = [c for c in out["classify"] if c["response"].get("reply")]
    if answered:
        first = answered[0]["response"]
        if human:
            print(f"\n== Feedback(RESOLVED) for {first['message_id']}")
        try:
            fb = client.feedback(first["message_id"], first["reply"]["variant_id"], pb.RESOLVED)
            out["feedback"] = {"message_id": first["message_id"], "kind": "RESOLVED", "response": to_dict(fb)}
            if human:
                print(f"  recorded   {fb.recorded}")
        except grpc.RpcError as err:
            out["errors"].append(rpc_error("Feedback", err))
            if human:
                show_error(out["errors"][-1])

    # 5. Errors: the server validates every field; a bad one comes back as a grpc.RpcError with
    #    INVALID_ARGUMENT and a message naming the field. Never retry those unchanged; do retry
    #    UNAVAILABLE / RESOURCE_EXHAUSTED / DEADLINE_EXCEEDED after a short back-off.
    if human:
        print("\n== Errors: Classify with an empty text")
    try:
        client.classify(client.request("", f"py-{run_id}-empty", args.chat, "user-x"))
        out["errors"].append({"call": "Classify", "text": "", "code": "OK", "details": "unexpectedly accepted"})
    except grpc.RpcError as err:
        out["errors"].append(rpc_error("Classify", err, text="", expected=True))
    if human:
        show_error(out["errors"][-1])


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Example intentd client (Classify, batch, events, feedback).")
    p.add_argument("texts", nargs="*", help="messages to classify (default: a few demo messages)")
    p.add_argument("--addr", default=os.environ.get("INTENTD_ADDR", DEFAULT_ADDR),
                   help="server host:port (env INTENTD_ADDR, default %(default)s)")
    p.add_argument("--token", default=os.environ.get("INTENTD_TOKEN", DEFAULT_TOKEN),
                   help="the bot's bearer token (env INTENTD_TOKEN)")
    p.add_argument("--bot", default="demo", help="bot_id the token belongs to (default %(default)s)")
    p.add_argument("--chat", default="g1", help="chat_id (the group) to use (default %(default)s)")
    p.add_argument("--timeout", type=float, default=5.0, help="deadline per call in seconds (default %(default)s)")
    p.add_argument("--wait", type=float, default=60.0, help="seconds to wait for SERVING (default %(default)s)")
    p.add_argument("--classify-only", action="store_true", help="only Classify; skip the batch/event/feedback/error demo")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(run(parse_args(sys.argv[1:])))

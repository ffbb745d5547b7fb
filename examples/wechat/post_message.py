"""Plays the WeChat platform for one message: builds a user's text message, encrypts and signs
it with wechatpy exactly as the Official Account platform does, POSTs it to intentd's callback
URL, then verifies and decrypts intentd's encrypted reply with wechatpy and prints it.

    pip install -r tests/wechat_interop/requirements.txt   # wechatpy
    python3 examples/wechat/post_message.py --url http://127.0.0.1:8080/wechat/demo-oa "这个多少钱"

The defaults match examples/wechat/wechat.yml. --timestamp lets a server on a manual clock be
used (the callback is refused when its timestamp is more than timestamp_window_s from now).
"""
import argparse
import random
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.replies import TextReply


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("text", help="the user's message")
    ap.add_argument("--url", default="http://127.0.0.1:8080/wechat/demo-oa")
    ap.add_argument("--token", default="walkthrough-token")
    ap.add_argument("--key", default="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
    ap.add_argument("--app-id", default="wx2c2769f8efd9abc2")
    ap.add_argument("--user", default="oWalkthroughUser")
    ap.add_argument("--msg-id", type=int, default=None, help="MsgId (default: random)")
    ap.add_argument("--timestamp", type=int, default=None, help="Unix seconds (default: now)")
    a = ap.parse_args()

    ts = str(a.timestamp or int(time.time()))
    nonce = str(random.randint(10**8, 10**9))
    msg_id = a.msg_id or random.randint(10**15, 10**16)
    # The message as the platform sends it (wechatpy renders the XML; MsgId added).
    message = TextReply(source=a.user, target="gh_walkthrough", content=a.text, time=int(ts)).render()
    message = message.replace("</xml>", "<MsgId>%d</MsgId></xml>" % msg_id)
    crypto = WeChatCrypto(a.token, a.key, a.app_id)
    envelope = crypto.encrypt_message(message, nonce, ts)
    sig = envelope.split("<MsgSignature><![CDATA[")[1].split("]]>")[0]
    query = urllib.parse.urlencode({"timestamp": ts, "nonce": nonce, "encrypt_type": "aes", "msg_signature": sig})
    req = urllib.request.Request(a.url + "?" + query, data=envelope.encode("utf-8"), headers={"Content-Type": "text/xml"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        print("refused: HTTP %d: %s" % (e.code, e.read().decode("utf-8").strip()), file=sys.stderr)
        return 1
    if body == "success":
        print("(no passive reply: `success`; a late answer goes through the send API)")
        return 0
    # Verify intentd's signature and decrypt its reply, as the platform would.
    fields = {k: body.split("<%s>" % k)[1].split("</%s>" % k)[0].replace("<![CDATA[", "").replace("]]>", "") for k in ("MsgSignature", "TimeStamp", "Nonce")}
    reply_xml = crypto.decrypt_message(body, fields["MsgSignature"], fields["TimeStamp"], fields["Nonce"])
    reply = parse_message(reply_xml)
    print(reply.content)
    return 0


if __name__ == "__main__":
    sys.exit(main())

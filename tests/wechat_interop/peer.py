"""wechatpy as the independent peer of tests/wechat_interop.rs.

Reads a JSON list of operations on stdin and prints a JSON list of results: each result is
{"ok": value} or {"error": "<exception class>"}. Operations:
  mp_encrypt / work_encrypt     {token, key, id, xml, nonce, timestamp} -> encrypted envelope XML
  mp_decrypt / work_decrypt     {token, key, id, xml, signature, timestamp, nonce} -> plaintext XML
  work_check_url                {token, key, id, signature, timestamp, nonce, echostr} -> echo
  plain_check                   {token, signature, timestamp, nonce} -> true
  text_reply                    {source, target, content, time} -> wechatpy-rendered reply XML
  parse                         {xml} -> {type, source, target, content, id, time}
"""
import json
import sys

from wechatpy import parse_message
from wechatpy.crypto import WeChatCrypto
from wechatpy.enterprise.crypto import WeChatCrypto as WorkCrypto
from wechatpy.replies import TextReply
from wechatpy.utils import check_signature


def run(op):
    kind = op["op"]
    if kind in ("mp_encrypt", "work_encrypt"):
        cls = WeChatCrypto if kind == "mp_encrypt" else WorkCrypto
        return cls(op["token"], op["key"], op["id"]).encrypt_message(op["xml"], op["nonce"], op["timestamp"])
    if kind in ("mp_decrypt", "work_decrypt"):
        cls = WeChatCrypto if kind == "mp_decrypt" else WorkCrypto
        out = cls(op["token"], op["key"], op["id"]).decrypt_message(op["xml"], op["signature"], op["timestamp"], op["nonce"])
        return out.decode("utf-8") if isinstance(out, bytes) else out
    if kind == "work_check_url":
        out = WorkCrypto(op["token"], op["key"], op["id"]).check_signature(op["signature"], op["timestamp"], op["nonce"], op["echostr"])
        return out.decode("utf-8") if isinstance(out, bytes) else out
    if kind == "plain_check":
        check_signature(op["token"], op["signature"], op["timestamp"], op["nonce"])
        return True
    if kind == "text_reply":
        return TextReply(source=op["source"], target=op["target"], content=op["content"], time=op["time"]).render()
    if kind == "parse":
        m = parse_message(op["xml"])
        return {
            "type": m.type,
            "source": m.source,
            "target": m.target,
            "content": getattr(m, "content", None),
            "id": m.id,
            "time": int(m.create_time.timestamp()) if hasattr(m.create_time, "timestamp") else m.create_time,
        }
    raise ValueError("unknown op " + kind)


def main():
    results = []
    for op in json.load(sys.stdin):
        try:
            results.append({"ok": run(op)})
        except Exception as e:  # the Rust side asserts on the class name
            results.append({"error": type(e).__name__})
    json.dump(results, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()

"""A client written to Rasa's documented `POST /model/parse` response (text, intent.name,
intent.confidence, intent_ranking, entities with entity/start/end/value/extractor) and nothing
else: pointing it at intentd must need only another URL and token. Standard library only.

usage: rasa_client.py BASE_URL TOKEN   (prints "<text>\t<intent>\t<confidence>" per message)
"""

import json
import sys
import urllib.request


def parse(base, token, text, message_id):
    body = json.dumps({"text": text, "message_id": message_id}).encode()
    req = urllib.request.Request(
        f"{base}/model/parse?token={token}",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def main():
    base, token = sys.argv[1], sys.argv[2]
    for i, text in enumerate(["我要退款，钱什么时候退回来", "你们几点开门"]):
        r = parse(base, token, text, f"rasa-client-{i}")
        assert r["text"] == text, r
        intent = r["intent"]
        assert isinstance(intent["name"], str) and 0.0 <= intent["confidence"] <= 1.0, r
        ranking = r["intent_ranking"]
        assert ranking and ranking[0]["name"] == intent["name"], r
        assert all(0.0 <= x["confidence"] <= 1.0 for x in ranking), r
        assert isinstance(r["entities"], list), r
        print(f"{text}\t{intent['name']}\t{intent['confidence']:.3f}")
    check_entities(base, token)


def check_entities(base, token):
    """Rasa's entity fields, with start/end as Python string indices (code points)."""
    text = "😀订单号2026112812345的保温杯明天到吗"
    r = parse(base, token, text, "rasa-client-entities")
    found = {e["entity"]: e for e in r["entities"]}
    assert set(found) >= {"order_id", "product", "date"}, r["entities"]
    for e in r["entities"]:
        assert isinstance(e["value"], str) and isinstance(e["extractor"], str), e
        assert 0 <= e["start"] < e["end"] <= len(text), e
    assert text[found["order_id"]["start"]:found["order_id"]["end"]] == "2026112812345", found
    assert text[found["product"]["start"]:found["product"]["end"]] == "保温杯", found
    assert found["product"]["value"] == "保温杯", found
    assert text[found["date"]["start"]:found["date"]["end"]] == found["date"]["text"] == "明天", found


if __name__ == "__main__":
    main()

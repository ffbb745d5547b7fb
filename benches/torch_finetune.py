#!/usr/bin/env python3
"""PyTorch reference for `intentd train --mode full`: the same fine-tuning, step for step, so
the two examples/s figures compare frameworks and not recipes.

Mirrors src/model/train.rs (full mode): m3e-small (BERT, 4 layers, hidden 512) from
models/m3e-small/pytorch_model.bin, mean pooling over real tokens, dropout 0.1, a linear head;
texts cut to 64 tokens; length-bucketed batches of 32 (pools of 20 batches sorted by length);
label-smoothed (0.1) cross-entropy; AdamW (encoder lr 1e-4, head 2e-3, weight decay 0.01) with
linear warm-up (10 %) and decay; gradient clipping at 1.0; word embeddings frozen; attention and
hidden dropout 0.1. Time counts training steps only (forward, backward, clipping, optimiser),
as intentd's examples/s does.

  pip install torch tokenizers numpy
  python3 benches/torch_finetune.py --data TSV [--epochs 1] [--threads 2] [--batch 32]

TSV: `text<TAB>label` with a header line (shared/datasets/smp2017/train.tsv). Prints one JSON
object as its last line: {"runtime": "torch", "examples_per_s": ..., ...}.
"""
import argparse, json, math, os, random, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))


class Bert(nn.Module):
    """Hugging Face BertModel's maths and parameter names (no pooler)."""

    def __init__(self, cfg, dropout):
        super().__init__()
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        self.heads = cfg["num_attention_heads"]
        self.eps = cfg.get("layer_norm_eps", 1e-12)
        self.p = dropout
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(cfg["vocab_size"], h)
        self.embeddings.position_embeddings = nn.Embedding(cfg["max_position_embeddings"], h)
        self.embeddings.token_type_embeddings = nn.Embedding(cfg.get("type_vocab_size", 2), h)
        self.embeddings.LayerNorm = nn.LayerNorm(h, eps=self.eps)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList()
        for _ in range(cfg["num_hidden_layers"]):
            l = nn.Module()
            l.attention = nn.Module()
            l.attention.self = nn.Module()
            l.attention.self.query = nn.Linear(h, h)
            l.attention.self.key = nn.Linear(h, h)
            l.attention.self.value = nn.Linear(h, h)
            l.attention.output = nn.Module()
            l.attention.output.dense = nn.Linear(h, h)
            l.attention.output.LayerNorm = nn.LayerNorm(h, eps=self.eps)
            l.intermediate = nn.Module()
            l.intermediate.dense = nn.Linear(h, i)
            l.output = nn.Module()
            l.output.dense = nn.Linear(i, h)
            l.output.LayerNorm = nn.LayerNorm(h, eps=self.eps)
            self.encoder.layer.append(l)

    def forward(self, ids, mask):
        b, t = ids.shape
        e = self.embeddings
        pos = torch.arange(t, device=ids.device)
        x = e.word_embeddings(ids) + e.token_type_embeddings(torch.zeros_like(ids)) + e.position_embeddings(pos)
        x = F.dropout(e.LayerNorm(x), self.p, self.training)
        bias = ((1.0 - mask[:, None, None, :].float()) * -10000.0)
        for l in self.encoder.layer:
            a = l.attention.self
            def split(y):
                return y.view(b, t, self.heads, -1).transpose(1, 2)
            q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
            ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=self.p if self.training else 0.0)
            ctx = ctx.transpose(1, 2).reshape(b, t, -1)
            o = F.dropout(l.attention.output.dense(ctx), self.p, self.training)
            x = l.attention.output.LayerNorm(o + x)
            i = F.gelu(l.intermediate.dense(x))
            o = F.dropout(l.output.dense(i), self.p, self.training)
            x = l.output.LayerNorm(o + x)
        return x


def read_tsv(path):
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")]
    if rows and rows[0][:2] == ["text", "label"]:
        rows = rows[1:]
    return [(r[0], r[1]) for r in rows if len(r) >= 2 and r[0]]


def lr_scale(step, total, warmup_ratio):
    warmup = max(1.0, math.ceil(total * warmup_ratio))
    if step < warmup:
        return (step + 1) / warmup
    return min(1.0, max(0.0, (total - step) / max(1.0, total - warmup)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--model-dir", default=os.path.join(HERE, "..", "models", "m3e-small"))
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(a.model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(a.max_len)
    cfg = json.load(open(os.path.join(a.model_dir, "config.json")))

    data = read_tsv(a.data)
    labels = sorted({l for _, l in data})
    index = {l: i for i, l in enumerate(labels)}
    enc = [(tok.encode(t).ids, index[l]) for t, l in data]

    bert = Bert(cfg, 0.1)
    state = torch.load(os.path.join(a.model_dir, "pytorch_model.bin"), map_location="cpu")
    state = {k[5:] if k.startswith("bert.") else k: v for k, v in state.items()}
    missing, _unexpected = bert.load_state_dict(state, strict=False)
    if missing:
        sys.exit(f"weights missing from pytorch_model.bin: {missing[:5]}")
    bert.embeddings.word_embeddings.weight.requires_grad_(False)
    head = nn.Linear(cfg["hidden_size"], len(labels))
    body = [p for p in bert.parameters() if p.requires_grad]
    opt_body = torch.optim.AdamW(body, lr=1e-4, weight_decay=0.01)
    opt_head = torch.optim.AdamW(head.parameters(), lr=2e-3, weight_decay=0.01)
    params = body + list(head.parameters())

    def batches():
        order = list(range(len(enc)))
        rng.shuffle(order)
        out = []
        for p in range(0, len(order), a.batch * 20):
            pool = sorted(order[p:p + a.batch * 20], key=lambda i: len(enc[i][0]))
            out += [pool[j:j + a.batch] for j in range(0, len(pool), a.batch)]
        rng.shuffle(out)
        return out

    steps_per_epoch = math.ceil(len(enc) / a.batch)
    total = steps_per_epoch * a.epochs
    bert.train(); head.train()
    step, seen, secs = 0, 0, 0.0
    for _ in range(a.epochs):
        for batch in batches():
            t0 = time.perf_counter()
            t = max(len(enc[i][0]) for i in batch)
            ids = torch.zeros((len(batch), t), dtype=torch.long)
            mask = torch.zeros((len(batch), t), dtype=torch.long)
            for r, i in enumerate(batch):
                ids[r, :len(enc[i][0])] = torch.tensor(enc[i][0])
                mask[r, :len(enc[i][0])] = 1
            ys = torch.tensor([enc[i][1] for i in batch])
            hidden = bert(ids, mask)
            m = mask.unsqueeze(2).float()
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
            logits = head(F.dropout(pooled, 0.1, True))
            loss = F.cross_entropy(logits, ys, label_smoothing=0.1)
            opt_body.zero_grad(set_to_none=True); opt_head.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            s = lr_scale(step, total, 0.1)
            for g in opt_body.param_groups: g["lr"] = 1e-4 * s
            for g in opt_head.param_groups: g["lr"] = 2e-3 * s
            opt_body.step(); opt_head.step()
            loss.item()
            secs += time.perf_counter() - t0
            step += 1
            seen += len(batch)
    print(json.dumps({"runtime": "torch", "torch": torch.__version__, "threads": a.threads,
                      "examples": seen, "steps": step, "seconds": round(secs, 2),
                      "examples_per_s": round(seen / secs, 1), "final_loss": round(loss.item(), 4)}))


if __name__ == "__main__":
    main()

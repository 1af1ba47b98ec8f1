"""Build the real CLIP BPE tokenizer files (vocab.json, merges.txt) from OpenAI's merge list.

The merge list ships as `bpe_simple_vocab_16e6.txt.gz` inside the open-clip-torch wheel; this turns it
into the two files `transformers.CLIPTokenizer` reads, so the package needs no network and no open_clip.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges: 49,408 tokens in all


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode, in CLIP's order (printable first)."""
    order = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    order += list(range(ord("®"), ord("ÿ") + 1))
    chars = [chr(b) for b in order]
    for b in range(256):
        if b not in order:
            order.append(b)
            chars.append(chr(256 + len(chars) - 188))  # 188 printable bytes keep their own character
    return dict(zip(order, chars))


def build_clip_tokenizer_files(bpe_gz: Path, out_dir: Path) -> int:
    """Write vocab.json and merges.txt for the CLIP tokenizer; returns the vocabulary size."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")[1 : N_MERGES + 1]
    return write_tokenizer_files([tuple(line.split()) for line in lines], out_dir)


def truncated_tokenizer_files(source_dir: Path, n_merges: int, out_dir: Path) -> int:
    """A CLIP BPE tokenizer that keeps only the first `n_merges` merges: any text still tokenizes (into
    more, shorter pieces) with a vocabulary small enough for the built-in evaluator's text tower."""
    lines = (Path(source_dir) / "merges.txt").read_text(encoding="utf-8").split("\n")[1 : n_merges + 1]
    return write_tokenizer_files([tuple(line.split()) for line in lines], out_dir)


def write_tokenizer_files(merges: list[tuple[str, str]], out_dir: Path) -> int:
    """vocab.json in CLIP's order (bytes, bytes + '</w>', merges, the two specials) and merges.txt."""
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return len(vocab)

"""The tokenizer's rank tables: OpenAI's `.tiktoken` files <-> edgegate's compact form.

    python3 tests/tokenizer/tables.py pack DIR      # DIR/{o200k_base,cl100k_base}.tiktoken -> shared/data/tokenizer/*.bin
    python3 tests/tokenizer/tables.py unpack DIR    # shared/data/tokenizer/*.bin -> DIR/<tiktoken cache name>

A `.tiktoken` file has one line per token: the token's bytes in base64, a space, its rank. The
compact form is what the gateway embeds (see shared/src/tokenizer.rs): the magic `EGTK1`, the token
count as a little-endian u32, one byte per token giving its length, then every token's bytes, all
in rank order (ranks are 0..count with no gaps). `unpack` writes the files back in the original
`.tiktoken` text under the names Python tiktoken caches them by (the SHA-1 of their URL), so
tiktoken, which checks each file against its published SHA-256, proves the tables are OpenAI's.
The `.tiktoken` files packed here came from the `tiktoken-rs` 0.7.0 crate (its `assets/`), which
ships them unchanged; their SHA-256 match the hashes tiktoken publishes.
"""

import base64
import hashlib
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
TABLES = os.path.join(HERE, "..", "..", "shared", "data", "tokenizer")
ENCODINGS = {
    "o200k_base": ("https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
                   "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"),
    "cl100k_base": ("https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"),
}


def pack(src):
    for name, (_, sha) in ENCODINGS.items():
        data = open(os.path.join(src, name + ".tiktoken"), "rb").read()
        if hashlib.sha256(data).hexdigest() != sha:
            sys.exit(f"{name}.tiktoken is not OpenAI's (SHA-256 differs)")
        tokens = {}
        for line in data.splitlines():
            token, rank = line.split()
            tokens[int(rank)] = base64.b64decode(token)
        if sorted(tokens) != list(range(len(tokens))):
            sys.exit(f"{name}: ranks are not 0..n")
        ordered = [tokens[r] for r in range(len(tokens))]
        if max(map(len, ordered)) > 255:
            sys.exit(f"{name}: a token is longer than 255 bytes")
        out = b"EGTK1" + struct.pack("<I", len(ordered)) + bytes(map(len, ordered)) + b"".join(ordered)
        open(os.path.join(TABLES, name + ".bin"), "wb").write(out)
        print(f"{name}: {len(ordered)} tokens, {len(out)} bytes")


def unpack(dst):
    os.makedirs(dst, exist_ok=True)
    for name, (url, sha) in ENCODINGS.items():
        data = open(os.path.join(TABLES, name + ".bin"), "rb").read()
        assert data[:5] == b"EGTK1", name
        (n,) = struct.unpack("<I", data[5:9])
        lengths, blob, pos = data[9:9 + n], data[9 + n:], 0
        lines = []
        for rank, length in enumerate(lengths):
            lines.append(base64.b64encode(blob[pos:pos + length]) + b" " + str(rank).encode() + b"\n")
            pos += length
        text = b"".join(lines)
        if hashlib.sha256(text).hexdigest() != sha:
            sys.exit(f"{name}: the table does not rebuild OpenAI's file")
        open(os.path.join(dst, hashlib.sha1(url.encode()).hexdigest()), "wb").write(text)


if __name__ == "__main__":
    {"pack": pack, "unpack": unpack}[sys.argv[1]](sys.argv[2])

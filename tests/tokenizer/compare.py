"""Compares the gateway's tokenizer with Python tiktoken, token for token, on a mixed corpus.

    python3 tests/tokenizer/compare.py TOKENIZE_BIN [--bytes N] [--keep CORPUS_FILE]

Run with a Python that has tiktoken (tests/run.sh uses the test virtualenv). It writes a corpus of
at least N bytes (default 1.5 MB) of documents: this repository's docs and sources, generated
prose in twenty scripts, code, JSON, numbers, whitespace runs, contractions, combining marks,
emoji and random assigned code points — all from a fixed seed. tiktoken encodes each document with
`o200k_base` and `cl100k_base` (`encode_ordinary`), loading the rank tables rebuilt from the
gateway's own (so tiktoken's SHA-256 check proves they are OpenAI's). TOKENIZE_BIN (the
`tokenize` example of edgegate-core) does the same. Every document's token ids must be equal.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", ".."))

WORDS = {
    "en": "the quick brown fox jumps over a lazy dog while gateways route every request to models".split(),
    "de": "Größe Straße über Fähigkeit Übersetzung schön Mädchen Brücke Käse Grüße".split(),
    "fr": "élève garçon déjà où être naïve cœur français préféré Noël".split(),
    "es": "niño corazón también pingüino año mañana acción información".split(),
    "pt": "não coração informação órgão pão irmã avô".split(),
    "tr": "İstanbul ığdır şeker çiçek öğrenci güneş dağ".split(),
    "vi": "Tiếng Việt người đường chữ quốc ngữ Hà Nội".split(),
    "ru": "Привет мир сегодня хорошая погода модель запрос ответ".split(),
    "uk": "Україна їжак ґанок європейський".split(),
    "el": "Καλημέρα κόσμε ελληνικά μοντέλο αίτημα".split(),
    "he": "שלום עולם בקשה מודל תשובה".split(),
    "ar": "مرحبا بالعالم نموذج طلب إجابة العربية".split(),
    "hi": "नमस्ते दुनिया मॉडल अनुरोध उत्तर हिन्दी".split(),
    "bn": "হ্যালো বিশ্ব মডেল বাংলা".split(),
    "ta": "வணக்கம் உலகம் தமிழ் மாதிரி".split(),
    "th": "สวัสดีชาวโลก ภาษาไทย แบบจำลอง".split(),
    "zh": "你好世界 今天天气很好 模型 请求 回答 网关 中文".split(),
    "ja": "こんにちは世界 日本語 カタカナ ひらがな 漢字 モデル".split(),
    "ko": "안녕하세요 세계 한국어 모델 요청 응답".split(),
    "am": "ሰላም ዓለም አማርኛ".split(),
}
EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇩🇪", "❤️", "🚀", "🧑🏻‍💻", "✅"]
CONTRACTIONS = ["don't", "I'LL", "we'Re", "it's", "they've", "she'd", "I'm", "'s", "O'Neil", "rock'n'roll"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n  ", "\u00a0", "\u3000", "\u2009", "    \n\n\n   "]


def generated(rng):
    """One generated document."""
    kind = rng.randrange(6)
    if kind == 0:  # prose in one or two scripts
        langs = rng.sample(sorted(WORDS), rng.choice([1, 1, 2]))
        words = [rng.choice(WORDS[rng.choice(langs)]) for _ in range(rng.randrange(5, 120))]
        out = []
        for w in words:
            out.append(w if rng.random() > 0.1 else w.upper() if rng.random() > 0.5 else w.capitalize())
            out.append(rng.choice([" "] * 12 + [", ", ". ", "! ", "? ", "; ", SPACES[rng.randrange(len(SPACES))]]))
        return "".join(out)
    if kind == 1:  # numbers, dates, amounts, identifiers
        parts = [str(rng.randrange(10 ** rng.randrange(1, 12))) for _ in range(rng.randrange(3, 30))]
        seps = [" ", ",", ".", "-", "/", ":", "$", "€", "%", "e", "x", "_"]
        return "".join(p + rng.choice(seps) for p in parts)
    if kind == 2:  # contractions, emoji, combining marks, zero-width joiners
        bits = CONTRACTIONS + EMOJI + ["e\u0301", "a\u0308\u0323", "\u200d", "\u200b", "ﬁ", "Ⅻ", "²³", "½"]
        return "".join(rng.choice(bits) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randrange(5, 60)))
    if kind == 3:  # JSON and code-like text
        doc = {f"key_{rng.randrange(999)}": [rng.random(), rng.choice(WORDS["en"]), {"nested": rng.choice(WORDS["zh"])}] for _ in range(rng.randrange(1, 12))}
        text = json.dumps(doc, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 2, 4]))
        return text + "\nfn main() {\n\tlet x = vec![1, 2, 3]; // comment\n    println!(\"{x:?}\");\n}\n"
    if kind == 4:  # long runs without spaces, and of one character
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
        run = "".join(rng.choice(alphabet) for _ in range(rng.randrange(50, 2000)))
        return run + " " + rng.choice("a-=. 汉") * rng.randrange(1, 300)
    # random assigned code points from across the planes, with spaces between some
    out = []
    for _ in range(rng.randrange(10, 200)):
        while True:
            cp = rng.choice([rng.randrange(0x20, 0x3000), rng.randrange(0x3000, 0xA000), rng.randrange(0xA000, 0x10000), rng.randrange(0x10000, 0x1FAFF)])
            c = chr(cp)
            if unicodedata.category(c) not in ("Cn", "Cs", "Co"):
                break
        out.append(c + (rng.choice(SPACES) if rng.random() < 0.2 else ""))
    return "".join(out)


def corpus(min_bytes):
    docs = []
    for folder, exts in [("docs", (".md",)), ("deploy", (".md",)), ("shared/src", (".rs",)), ("tests/e2e", (".mjs",))]:
        for dirpath, _, files in sorted(os.walk(os.path.join(ROOT, folder))):
            for f in sorted(files):
                if f.endswith(exts):
                    docs.append(open(os.path.join(dirpath, f), encoding="utf-8").read())
    docs.append(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    rng = random.Random(20261129)
    size = sum(len(d.encode()) for d in docs)
    while size < min_bytes:
        d = generated(rng)
        docs.append(d)
        size += len(d.encode())
    return docs, size


def main():
    binary = sys.argv[1]
    min_bytes = int(sys.argv[sys.argv.index("--bytes") + 1]) if "--bytes" in sys.argv else 1_500_000
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, "tiktoken-cache")
        subprocess.run([sys.executable, os.path.join(HERE, "tables.py"), "unpack", cache], check=True)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        import tiktoken

        docs, size = corpus(min_bytes)
        path = os.path.join(tmp, "corpus.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d) + "\n")
        if "--keep" in sys.argv:
            keep = sys.argv[sys.argv.index("--keep") + 1]
            with open(path, "rb") as src, open(keep, "wb") as dst:
                dst.write(src.read())
        ours = subprocess.run([binary, path], check=True, capture_output=True, text=True).stdout.splitlines()
        failures = 0
        total = 0
        for name in ["o200k_base", "cl100k_base"]:
            enc = tiktoken.get_encoding(name)
            t = time.perf_counter()
            theirs = [enc.encode_ordinary(d) for d in docs]
            seconds = time.perf_counter() - t
            mine = [line.split("\t") for line in ours if line.startswith(name + "\t")]
            if len(mine) != len(docs):
                sys.exit(f"{name}: the tokenizer printed {len(mine)} lines for {len(docs)} documents")
            tokens = sum(len(ids) for ids in theirs)
            total += tokens
            for i, (ids, (_, count, digest)) in enumerate(zip(theirs, mine)):
                want = hashlib.sha256(" ".join(map(str, ids)).encode()).hexdigest()[:16]
                if int(count) != len(ids) or digest != want:
                    failures += 1
                    if failures <= 5:
                        print(f"{name} document {i}: tiktoken {len(ids)} tokens, ours {count}: {docs[i][:80]!r}", file=sys.stderr)
            print(f"  {name}: {len(docs)} documents, {size} bytes, {tokens} tokens; tiktoken {tokens / seconds / 1e6:.2f} M tokens/s")
        if failures:
            sys.exit(f"{failures} documents differ from tiktoken")
        print(f"  identical to tiktoken {tiktoken.__version__}: {total} tokens over {len(docs)} documents in two encodings")


if __name__ == "__main__":
    main()

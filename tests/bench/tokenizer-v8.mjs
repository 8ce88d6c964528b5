// The tokenizer's first use and throughput in V8, the engine workerd embeds, without workerd: the
// `tokenize` example built for WASI preview 1 and run by Node's WASI, each run in a fresh Node
// process (so a fresh isolate, with V8's baseline compiler first and its optimising compiler
// later, as in a fresh Worker). Prints the medians of `--bench`'s figures; writes
// target/bench/tokenizer-v8.json. Asserts nothing; not part of the test command.
//   cargo build --release -p edgegate-core --example tokenize --target wasm32-wasip1
//   node tests/bench/tokenizer-v8.mjs CORPUS [runs] [WASM]
import { readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(fileURLToPath(import.meta.url), "../../..");
if (process.argv[2] === "--child") {
  // One run: the example, its corpus read through a preopened directory.
  const [, , , wasm, corpus] = process.argv;
  const { WASI } = await import("node:wasi");
  const wasi = new WASI({ version: "preview1", args: ["tokenize", "/corpus/" + corpus.split("/").pop(), "--bench"], preopens: { "/corpus": join(corpus, "..") } });
  const instance = await WebAssembly.instantiate(await WebAssembly.compile(readFileSync(wasm)), wasi.getImportObject());
  wasi.start(instance);
} else {
  const corpus = process.argv[2];
  const runs = Number(process.argv[3] ?? 7);
  const wasm = process.argv[4] ?? join(ROOT, "target/wasm32-wasip1/release/examples/tokenize.wasm");
  if (!corpus) throw new Error("usage: node tests/bench/tokenizer-v8.mjs CORPUS [runs] [WASM]");
  const figures = {};
  for (let i = 0; i < runs; i++) {
    const out = spawnSync(process.execPath, ["--no-warnings", fileURLToPath(import.meta.url), "--child", wasm, corpus], { encoding: "utf8" });
    if (out.status !== 0) throw new Error(out.stderr);
    for (const line of out.stdout.trim().split("\n")) {
      const m = line.match(/^(\w+): first use ([\d.]+) ms .*then not ASCII ([\d.]+) ms, \d+ tokens in [\d.]+ ms: ([\d.]+) M tokens\/s/);
      if (!m) throw new Error(`unexpected line: ${line}`);
      const f = (figures[m[1]] ??= { first_use_ms: [], then_not_ascii_ms: [], m_tokens_per_s: [] });
      f.first_use_ms.push(Number(m[2]));
      f.then_not_ascii_ms.push(Number(m[3]));
      f.m_tokens_per_s.push(Number(m[4]));
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`Node ${process.version} (V8 ${process.versions.v8}), ${runs} fresh processes, medians`);
  for (const [name, f] of Object.entries(figures)) {
    console.log(`${name}: first use ${median(f.first_use_ms).toFixed(2)} ms, then not ASCII ${median(f.then_not_ascii_ms).toFixed(2)} ms, ${median(f.m_tokens_per_s).toFixed(2)} M tokens/s`);
  }
  mkdirSync(join(ROOT, "target/bench"), { recursive: true });
  writeFileSync(join(ROOT, "target/bench/tokenizer-v8.json"), JSON.stringify({ node: process.version, v8: process.versions.v8, runs, figures }, null, 2));
}

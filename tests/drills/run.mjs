// Game-day drills against a local deployment: the built Worker in workerd (or the component in
// the Spin test host) in front of the upstream simulator, all on 127.0.0.1. Each drill stages an
// incident, measures how the gateway behaves, and prints PASS or FAIL with its figures; results
// also go to target/drills/results.json. Every drill is bounded in requests and time.
//
//   node tests/drills/run.mjs [--short] [--runtime workerd|spin] [drill ...]
//
// Drills: provider-outage, canary-regression, injection-wave, quota-exhaustion, token-explosion.
// `--short` (what the test command runs) uses fewer requests; the monthly drill runs the full form.
// The runbooks in deploy/runbooks say what to do when a drill fails in production.

import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, startSimulator, startWorkerd, startSpin, admin, sha256, steadyLoad, records, eventually, awayFromMinuteEdge } from "../e2e/lib.mjs";

const args = process.argv.slice(2);
const SHORT = args.includes("--short");
const runtime = args.includes("--runtime") ? args[args.indexOf("--runtime") + 1] : "workerd";
const chosen = args.filter((a, i) => !a.startsWith("--") && args[i - 1] !== "--runtime");

const KEYS = { app: "sk-drill-app", quota: "sk-drill-quota", tokens: "sk-drill-tokens", canary: "sk-drill-canary", other: "sk-drill-other" };
const QUOTA_RPM = SHORT ? 10 : 40;
const TOKENS_PER_DAY = 20_000;
const MAX_PROMPT_TOKENS = 1_000;
const MAX_OUTPUT_TOKENS = 200;
const MIN_FEEDBACK = SHORT ? 6 : 20;

function policy(simUrl, canaryModel = "mock-1") {
  const dep = (id) => ({ id, kind: "openai_compatible", base_url: `${simUrl}/dep/${id}/v1` });
  return {
    tenants: [
      { id: "app" },
      { id: "quota" },
      { id: "tokens", limits: { tokens_per_day: TOKENS_PER_DAY, max_prompt_tokens: MAX_PROMPT_TOKENS, max_output_tokens: MAX_OUTPUT_TOKENS } },
      { id: "canary" },
      { id: "other" },
    ],
    keys: Object.entries(KEYS).map(([tenant, key]) => ({ id: `${tenant}-key`, tenant, hash: sha256(key) })),
    providers: [dep("a"), dep("b"), { id: "builtin", kind: "mock" }],
    models: [
      { alias: "chat", targets: [{ provider: "a", model: "sim-a" }, { provider: "b", model: "sim-b" }] },
      { alias: "guarded", firewall: { injection: "block" }, targets: [{ provider: "a", model: "sim-guarded" }] },
      { alias: "premium", limits: { requests_per_minute: QUOTA_RPM }, overflow: "standard", targets: [{ provider: "a", model: "sim-premium" }] },
      { alias: "standard", targets: [{ provider: "b", model: "sim-standard" }] },
      { alias: "assistant", targets: [{ provider: "builtin", model: canaryModel }] },
    ],
    settings: {
      policy_refresh_seconds: 0,
      breaker: { error_percent: 50, min_requests: 10, window_seconds: 10, open_seconds: 2, probe_percent: 25, close_after: 2 },
      quality: { slo: 0.9, min_feedback: MIN_FEEDBACK },
    },
  };
}

const pct = (xs, p) => {
  const s = [...xs].sort((x, y) => x - y);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] : NaN;
};
const share = (n, d) => (d ? (100 * n) / d : 0);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function chat(gw, key, model, content, extra = {}) {
  const t0 = performance.now();
  const r = await fetch(`${gw.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content }], ...extra }),
  });
  const text = await r.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {}
  return { status: r.status, body, ms: performance.now() - t0, id: r.headers.get("x-request-id"), version: r.headers.get("x-edgegate-policy-version"), retryAfter: r.headers.get("retry-after") };
}

/** Requests the simulator received since the last call, per deployment; clears them. */
async function served(sim) {
  const got = await sim.received();
  await sim.clear();
  const counts = {};
  for (const r of got) counts[r.deployment ?? "-"] = (counts[r.deployment ?? "-"] ?? 0) + 1;
  return { counts, requests: got };
}

const fault = (sim, dep, directives) =>
  fetch(`${sim.url}/_sim/faults/${dep}`, directives ? { method: "PUT", body: JSON.stringify(directives) } : { method: "DELETE" });

/** The records of requests `ids`, once the gateway has logged them all (bounded wait), or null. */
function recordsOf(gw, ids) {
  const want = new Set(ids);
  return eventually(() => {
    const got = records(gw.lines).filter((r) => want.has(r.request_id));
    return got.length >= want.size && got;
  }, { tries: 150 });
}

const breakerState = async (gw, dep) => (await admin(gw.url, "GET", "/health/default")).body?.board?.deployments?.[dep]?.state?.state ?? "closed";

// 1. The primary provider fails: traffic must fail over with no client errors, the breaker must
//    open, and the primary must take traffic back once it recovers.
async function providerOutage({ gw, sim }) {
  const rps = SHORT ? 40 : 100;
  const seconds = SHORT ? 2 : 6;
  const load = () => steadyLoad({ send: () => chat(gw, KEYS.app, "chat", "status report"), rps, seconds });
  await served(sim);
  const healthy = await load();
  const before = await served(sim);
  const faultAt = Date.now();
  await fault(sim, "a", { status: 503 });
  const outage = await load();
  const during = await served(sim);
  let opened = await breakerState(gw, "a");
  await fault(sim, "a", null);
  const clearedAt = Date.now();
  // Keep traffic flowing until A's breaker closes again (bounded at 30 s).
  let closedAt = null;
  let recoveryRequests = 0;
  while (Date.now() - clearedAt < 30_000) {
    const burst = await Promise.all(Array.from({ length: 5 }, () => chat(gw, KEYS.app, "chat", "status report")));
    recoveryRequests += burst.length;
    if ((await breakerState(gw, "a")) === "closed") {
      closedAt = Date.now();
      break;
    }
    await sleep(100);
  }
  await served(sim);
  const after = await load();
  const afterCounts = (await served(sim)).counts;
  const errors = outage.results.filter((r) => r.status !== 200).length + after.results.filter((r) => r.status !== 200).length;
  const total = outage.results.length + after.results.length;
  const failoverShare = share(during.counts.b ?? 0, outage.results.length);
  const events = records(gw.lines).flatMap((r) => (r.breaker_events ?? []).map((e) => ({ ...e, at: r.start_ms })));
  const openedEvent = events.find((e) => e.deployment === "a" && e.change === "opened" && e.at >= faultAt);
  if (openedEvent) opened = "opened";
  const figures = {
    requests: healthy.results.length + total + recoveryRequests,
    client_error_rate_percent: share(errors, total),
    failover_share_percent: failoverShare,
    primary_attempts_during_outage: during.counts.a ?? 0,
    breaker_opened_after_ms: openedEvent ? openedEvent.at - faultAt : null,
    recovery_ms: closedAt ? closedAt - clearedAt : null,
    primary_share_after_percent: share(afterCounts.a ?? 0, after.results.length),
    outage_p99_ms: pct(outage.results.map((r) => r.ms), 99),
  };
  return {
    figures,
    checks: [
      ["healthy primary took all traffic", (before.counts.b ?? 0) === 0],
      ["no client errors (≤ 1 %)", figures.client_error_rate_percent <= 1],
      ["breaker opened", opened !== "closed"],
      ["failover carried the outage (≥ 90 %)", failoverShare >= 90],
      ["breaker closed within 30 s of recovery", closedAt !== null],
      ["primary serves again (≥ 90 %)", figures.primary_share_after_percent >= 90],
    ],
    summary: `errors ${figures.client_error_rate_percent.toFixed(1)} %, failover share ${failoverShare.toFixed(1)} %, ` +
      `breaker opened ${figures.breaker_opened_after_ms ?? "?"} ms after the fault, closed ${figures.recovery_ms ?? "—"} ms after recovery, ` +
      `primary share after ${figures.primary_share_after_percent.toFixed(0)} %, outage p99 ${figures.outage_p99_ms.toFixed(1)} ms`,
  };
}

// 2. A canary routes a tenant to a worse model; users' feedback must end it automatically.
async function canaryRegression({ gw, sim }) {
  const published = await admin(gw.url, "POST", "/policy/publish", { policy: policy(sim.url, "mock-2"), canary: { tenants: ["canary"] }, note: "drill: bad canary" });
  if (published.status !== 200) throw new Error(`canary publish failed: ${JSON.stringify(published.body)}`);
  const canary = published.body.version;
  const start = Date.now();
  // Users score what they got: answers from the canary's model are poor.
  const judge = (answer) => (answer.body?.model === "mock-2" ? 0.2 : 1);
  let rolledBackAt = null;
  let scored = 0;
  let otherOnCanary = 0;
  for (let i = 0; i < MIN_FEEDBACK * 3 && rolledBackAt === null; i++) {
    const a = await chat(gw, KEYS.canary, "assistant", `question ${i}`);
    const o = await chat(gw, KEYS.other, "assistant", `question ${i}`);
    if (o.version === canary) otherOnCanary++;
    if (a.status !== 200) continue;
    const fb = await eventually(async () => {
      const r = await fetch(`${gw.url}/v1/feedback`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEYS.canary}`, "content-type": "application/json" },
        body: JSON.stringify({ request_id: a.id, score: judge(a), label: judge(a) < 0.5 ? "thumbs_down" : "thumbs_up" }),
      });
      return r.status !== 404 && (await r.json());
    }, { ms: 30 });
    scored++;
    if (fb?.canary_rolled_back === canary) rolledBackAt = Date.now();
  }
  const after = await chat(gw, KEYS.canary, "assistant", "after the rollback");
  const state = await admin(gw.url, "GET", "/policy");
  const figures = { feedback_sent: scored, time_to_rollback_ms: rolledBackAt ? rolledBackAt - start : null, other_tenant_requests_on_canary: otherOnCanary };
  return {
    figures,
    checks: [
      ["canary rolled back by the quality SLO", rolledBackAt !== null && state.body?.canary === null],
      ["canary tenant back on the active version", after.status === 200 && after.version !== canary && after.body?.model === "mock-1"],
      ["other tenants never saw the canary", otherOnCanary === 0],
    ],
    summary: `rolled back after ${scored} feedback(s), ${figures.time_to_rollback_ms ?? "—"} ms after the canary was published; other tenants on the canary: ${otherOnCanary}`,
  };
}

// 3. A wave of prompt injections mixed with normal traffic: detected attacks are refused and never
//    reach the provider; normal prompts are served.
async function injectionWave({ gw, sim }) {
  const corpus = readFileSync(join(ROOT, "shared/tests/corpus/firewall.jsonl"), "utf8")
    .split("\n")
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
  const expectedInjection = (c) => c.expect.some((e) => e.startsWith("injection."));
  const attacks = corpus.filter((c) => c.label === "attack" && expectedInjection(c) && !c.known_miss);
  const misses = corpus.filter((c) => c.label === "attack" && c.known_miss);
  const benign = corpus.filter((c) => c.label === "benign" && !c.known_false_alarm && c.expect.length === 0);
  const rounds = SHORT ? 1 : 3;
  const wave = [];
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < Math.max(attacks.length, benign.length); i++) {
      if (attacks[i]) wave.push({ kind: "attack", text: attacks[i].text });
      if (benign[i]) wave.push({ kind: "benign", text: benign[i].text });
    }
  }
  await served(sim);
  const t0 = performance.now();
  const results = [];
  for (let i = 0; i < wave.length; i += 8) {
    const batch = wave.slice(i, i + 8);
    results.push(...(await Promise.all(batch.map(async (w) => ({ ...w, ...(await chat(gw, KEYS.app, "guarded", w.text)) })))));
  }
  const seconds = (performance.now() - t0) / 1000;
  const upstream = (await served(sim)).requests.map((r) => JSON.stringify(r.body?.messages ?? ""));
  const attackResults = results.filter((r) => r.kind === "attack");
  const benignResults = results.filter((r) => r.kind === "benign");
  const denied = attackResults.filter((r) => r.status === 400 && r.body?.error?.code === "prompt_blocked").length;
  const leaked = attackResults.filter((r) => upstream.some((u) => u.includes(JSON.stringify(r.text).slice(1, -1)))).length;
  const served200 = benignResults.filter((r) => r.status === 200).length;
  const recs = await recordsOf(gw, results.map((r) => r.id));
  const suspicious = recs ? share(recs.filter((r) => r.suspicious).length, recs.length) : null;
  const figures = {
    requests: results.length,
    requests_per_second: results.length / seconds,
    attacks_denied_percent: share(denied, attackResults.length),
    attacks_reaching_provider: leaked,
    benign_served_percent: share(served200, benignResults.length),
    suspicious_ratio_percent: suspicious,
    known_misses_not_sent: misses.length,
  };
  return {
    figures,
    checks: [
      ["every detectable attack denied", denied === attackResults.length],
      ["no denied attack reached the provider", leaked === 0],
      ["normal prompts served", served200 === benignResults.length],
    ],
    summary: `${results.length} prompts at ${figures.requests_per_second.toFixed(0)}/s: attacks denied ${figures.attacks_denied_percent.toFixed(1)} %, ` +
      `reaching the provider ${leaked}, benign served ${figures.benign_served_percent.toFixed(1)} %` +
      (suspicious === null ? "" : `, suspicious ratio ${suspicious.toFixed(1)} %`) +
      ` (the corpus's ${misses.length} known misses are not sent)`,
  };
}

// 4. A tenant outgrows its premium route's quota: the overflow route takes the rest, no 429.
async function quotaExhaustion({ gw, sim }) {
  const n = QUOTA_RPM * 3;
  await awayFromMinuteEdge(SHORT ? 5 : 15);
  await served(sim);
  const results = [];
  for (let i = 0; i < n; i += 10) {
    results.push(...(await Promise.all(Array.from({ length: Math.min(10, n - i) }, () => chat(gw, KEYS.quota, "premium", "quarterly numbers")))));
  }
  const { counts } = await served(sim);
  const limited = results.filter((r) => r.status === 429).length;
  const overflowed = results.filter((r) => r.status === 200 && r.body?.model === "sim-standard").length;
  const figures = { requests: n, premium: counts.a ?? 0, overflow: counts.b ?? 0, overflow_share_percent: share(overflowed, n), refused_429: limited };
  return {
    figures,
    checks: [
      ["premium admitted exactly its quota", (counts.a ?? 0) === QUOTA_RPM],
      ["the rest took the overflow route", overflowed === n - QUOTA_RPM && (counts.b ?? 0) === n - QUOTA_RPM],
      ["no request refused", limited === 0 && results.every((r) => r.status === 200)],
    ],
    summary: `${n} requests against ${QUOTA_RPM}/min: premium ${figures.premium}, overflow ${figures.overflow} (${figures.overflow_share_percent.toFixed(0)} %), 429s ${limited}`,
  };
}

// 5. A runaway client sends ever longer prompts and asks for huge outputs: the caps hold, budget
//    alerts fire once each, and the daily budget stops it with a distinct error.
async function tokenExplosion({ gw, sim }) {
  await served(sim);
  const huge = await chat(gw, KEYS.tokens, "chat", "lorem ipsum ".repeat(MAX_PROMPT_TOKENS));
  const hugeSent = (await served(sim)).requests.length;
  const greedy = await chat(gw, KEYS.tokens, "chat", "summarise the report", { max_tokens: 100_000 });
  const greedySent = (await served(sim)).requests[0]?.body ?? {};
  const ids = [greedy.id];
  let stopped = null;
  let admitted = 1;
  const prompt = "expand on this point at length ".repeat(100); // about 800 estimated tokens
  for (let i = 0; i < 100 && !stopped; i++) {
    const r = await chat(gw, KEYS.tokens, "chat", prompt);
    ids.push(r.id);
    if (r.status === 200) admitted++;
    else stopped = r;
  }
  // Settlements are written after each response: wait until none is outstanding.
  const ledger = await eventually(async () => {
    const book = (await admin(gw.url, "GET", "/tenants/tokens/usage")).body?.ledger;
    return book && Object.keys(book.holds ?? {}).length === 0 && book;
  }, { tries: 100, ms: 30 });
  const spent = Object.entries(ledger?.counters ?? {}).find(([id]) => id.endsWith("tokens_per_day"))?.[1]?.used ?? null;
  const recs = await recordsOf(gw, ids);
  const alerts = recs ? recs.flatMap((r) => r.budget_alerts ?? []).filter((a) => a.counter.endsWith("tokens_per_day")) : null;
  const percents = alerts?.map((a) => a.percent) ?? [];
  const untilMidnight = 86_400 - Math.floor((Date.now() / 1000) % 86_400);
  const retryAfter = Number(stopped?.retryAfter);
  const figures = {
    admitted,
    tokens_spent: spent,
    budget_alert_percents: percents,
    projected_exhaustion_ms: alerts?.find((a) => a.projected_exhaustion_ms)?.projected_exhaustion_ms ?? null,
    clamped_max_tokens: greedySent.max_tokens ?? greedySent.max_completion_tokens ?? null,
    stop_code: stopped?.body?.error?.code ?? null,
    retry_after_s: retryAfter,
  };
  const checks = [
    ["an over-long prompt is refused before anything is sent", huge.status === 400 && huge.body?.error?.code === "context_length_exceeded" && hugeSent === 0],
    ["max_tokens is clamped to the cap", greedy.status === 200 && figures.clamped_max_tokens === MAX_OUTPUT_TOKENS],
    ["the daily budget stops the client with budget_exceeded", stopped?.status === 429 && figures.stop_code === "budget_exceeded"],
    ["Retry-After points at the end of the day", Math.abs(retryAfter - untilMidnight) <= 5],
    ["every hold settled, spend within the budget", ledger !== null && spent !== null && spent <= TOKENS_PER_DAY],
  ];
  checks.push(["budget alerts at 50, 80 and 100 %, once each", JSON.stringify(percents) === JSON.stringify([50, 80, 100])]);
  return {
    figures,
    checks,
    summary: `${admitted} requests admitted before ${figures.stop_code ?? "no stop"}, ${spent} of ${TOKENS_PER_DAY} tokens spent; alerts ${percents.join("/")} %; ` +
      `max_tokens 100000 → ${figures.clamped_max_tokens}; Retry-After ${retryAfter} s`,
  };
}

const DRILLS = {
  "provider-outage": providerOutage,
  "injection-wave": injectionWave,
  "quota-exhaustion": quotaExhaustion,
  "token-explosion": tokenExplosion,
  "canary-regression": canaryRegression,
};

const names = chosen.length ? chosen : Object.keys(DRILLS);
for (const n of names) if (!DRILLS[n]) throw new Error(`no drill named ${n}; drills: ${Object.keys(DRILLS).join(", ")}`);

const sim = await startSimulator();
const gw = await (runtime === "spin" ? startSpin : startWorkerd)({ policy: policy(sim.url) });
const results = [];
let failed = 0;
try {
  for (const name of names) {
    const t0 = Date.now();
    let result;
    try {
      result = await DRILLS[name]({ gw, sim });
    } catch (e) {
      result = { figures: {}, checks: [["ran to the end", false]], summary: String(e?.stack ?? e) };
    }
    const pass = result.checks.every(([, ok]) => ok);
    if (!pass) failed++;
    const seconds = (Date.now() - t0) / 1000;
    console.log(`${pass ? "PASS" : "FAIL"} ${name.padEnd(18)} ${result.summary} [${seconds.toFixed(1)} s]`);
    for (const [check, ok] of result.checks) if (!ok) console.log(`     ✗ ${check}`);
    results.push({ drill: name, pass, seconds, figures: result.figures, checks: Object.fromEntries(result.checks) });
  }
} finally {
  await gw.stop();
  await sim.stop();
}
const dir = join(ROOT, "target", "drills");
mkdirSync(dir, { recursive: true });
writeFileSync(join(dir, "results.json"), JSON.stringify({ runtime, short: SHORT, at: new Date().toISOString(), results }, null, 2) + "\n");
console.log(`${names.length - failed}/${names.length} drills passed on ${runtime}${SHORT ? " (short form)" : ""}`);
process.exit(failed ? 1 : 0);

// The policy lifecycle end to end: the admin CLI publishes, canaries, promotes and rolls back
// policy on the built Worker in workerd and the built Spin component (through the gateway's
// admin API), keys are created and revoked, roles stay separate, and a KV outage in workerd
// leaves the last good policy serving.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { generateKeyPairSync, sign as cryptoSign } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

import { ROOT, sha256, startWorkerd, startSpin, startSimulator, publish, admin, ADMIN_KEY } from "./lib.mjs";

const ACME = "sk-e2e-policy-acme";
const BETA = "sk-e2e-policy-beta";
const WRITER = "sk-e2e-policy-writer";
const EXPIRED = "sk-e2e-policy-expired";

function doc(rpm) {
  return {
    tenants: [{ id: "acme", limits: { requests_per_minute: rpm } }, { id: "beta" }, { id: "ops" }],
    keys: [
      { id: "acme-key", tenant: "acme", hash: sha256(ACME) },
      { id: "beta-key", tenant: "beta", hash: sha256(BETA) },
      { id: "writer", tenant: "ops", hash: sha256(WRITER), roles: ["policy:read", "policy:write", "keys:admin"] },
      { id: "expired", tenant: "beta", hash: sha256(EXPIRED), expires_at: 1_000_000_000 },
    ],
    providers: [{ id: "builtin", kind: "mock" }],
    models: [{ alias: "mock", targets: [{ provider: "builtin", model: "mock-1" }] }],
    settings: { policy_refresh_seconds: 0 },
  };
}

const dir = mkdtempSync(join(tmpdir(), "edgegate-policy-"));
const file = (name, value) => {
  const path = join(dir, name);
  writeFileSync(path, typeof value === "string" ? value : JSON.stringify(value, null, 2));
  return path;
};
after(() => rmSync(dir, { recursive: true, force: true }));

/** Runs the admin CLI; resolves to { status, stdout, stderr }. Asynchronous, so the servers in
 * this process keep answering while it runs. */
function cli(args, env) {
  const bin = process.env.EDGEGATE_ADMIN_CLI ?? join(ROOT, "target/debug/edgegate-admin");
  const options = { env: { ...process.env, EDGEGATE_ADMIN_USER: "e2e", ...env }, encoding: "utf8", timeout: 120_000 };
  return new Promise((resolve, reject) =>
    execFile(bin, args, options, (error, stdout, stderr) => {
      if (error && typeof error.code !== "number") reject(error);
      else resolve({ status: error ? error.code : 0, stdout, stderr });
    }),
  );
}

async function chat(url, key) {
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "mock", messages: [{ role: "user", content: "hi" }] }),
  });
  const body = await res.json();
  return { status: res.status, version: res.headers.get("x-edgegate-policy-version"), code: body.error?.code };
}

const runtimes = {
  workerd: (policy) => startWorkerd({ policy }),
  spin: (policy) => startSpin({ policy }),
};

for (const [name, start] of Object.entries(runtimes)) {
  describe(`policy lifecycle through the admin CLI on ${name}`, () => {
    let gw;
    let v1;
    let gateway;
    before(async () => {
      gw = await start(doc(5));
      v1 = (await chat(gw.url, ACME)).version;
      gateway = (args) => cli(["--target", "gateway", ...args], { EDGEGATE_URL: gw.url, EDGEGATE_ADMIN_KEY: WRITER });
    });
    after(() => gw?.stop());

    test("a bad policy is refused with every error, and nothing changes", async () => {
      const bad = doc(5);
      bad.keys[0].tenant = "ghost";
      bad.models[0].targets[0].provider = "nowhere";
      const path = file(`bad-${name}.json`, bad);
      const checked = await cli(["validate", path]);
      assert.equal(checked.status, 1);
      assert.match(checked.stdout, /models\[0\]\.targets\[0\]\.provider: unknown provider "nowhere"/);
      assert.match(checked.stdout, /keys\[0\]\.tenant: unknown tenant "ghost"/);
      const refused = await gateway(["publish", path]);
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /failed \(422\)/);
      assert.match(refused.stderr, /models\[0\]\.targets\[0\]\.provider/);
      assert.match(refused.stderr, /keys\[0\]\.tenant/);
      assert.equal((await chat(gw.url, ACME)).version, v1);
    });

    test("canary, promote, rollback", async () => {
      const v2file = file(`v2-${name}.json`, doc(50));
      const diff = await gateway(["diff", v2file]);
      assert.equal(diff.status, 0, diff.stderr);
      assert.equal(diff.stdout.trim(), "~ tenants[acme].limits.requests_per_minute: 5 -> 50");

      const canary = await gateway(["publish", v2file, "--canary-tenants", "acme", "--note", "raise acme"]);
      assert.equal(canary.status, 0, canary.stderr);
      const v2 = canary.stdout.match(/published ([0-9a-f]{16}) to canary/)?.[1];
      assert.ok(v2 && v2 !== v1, canary.stdout);
      assert.equal((await chat(gw.url, ACME)).version, v2, "the canary tenant is served v2");
      assert.equal((await chat(gw.url, BETA)).version, v1, "everyone else v1");

      assert.equal((await gateway(["promote"])).status, 0);
      assert.deepEqual([(await chat(gw.url, ACME)).version, (await chat(gw.url, BETA)).version], [v2, v2]);

      const back = await gateway(["rollback", "--note", "e2e"]);
      assert.equal(back.status, 0, back.stderr);
      assert.match(back.stdout, new RegExp(`active is now ${v1}`));
      assert.deepEqual([(await chat(gw.url, ACME)).version, (await chat(gw.url, BETA)).version], [v1, v1]);

      const history = JSON.parse((await gateway(["--json", "history"])).stdout).history;
      assert.deepEqual(history.slice(0, 3).map((e) => [e.action, e.version, e.by]), [
        ["rollback", v1, "writer"],
        ["promote", v2, "writer"],
        ["canary", v2, "writer"],
      ]);

      // A canary can also be ended without promoting it.
      assert.equal((await gateway(["publish", v2file, "--canary-tenants", "acme"])).status, 0);
      assert.equal((await chat(gw.url, ACME)).version, v2);
      const aborted = await gateway(["abort-canary", "--note", "e2e"]);
      assert.equal(aborted.status, 0, aborted.stderr);
      assert.match(aborted.stdout, new RegExp(`canary ${v2} ended`));
      assert.equal((await chat(gw.url, ACME)).version, v1, "the canary tenant is back on v1");
      assert.notEqual((await gateway(["abort-canary"])).status, 0, "no canary runs");
    });

    test("keys are created with the secret shown once, then revoked", async () => {
      const created = await gateway(["keys", "create", "--id", `new-${name}`, "--tenant", "beta", "--models", "mock"]);
      assert.equal(created.status, 0, created.stderr);
      const secret = created.stdout.match(/(sk-eg-[0-9a-f]{64})/)?.[1];
      assert.ok(secret, created.stdout);
      const shown = (await gateway(["show"])).stdout;
      assert.ok(shown.includes(sha256(secret)) && !shown.includes(secret), "only the hash is stored");
      assert.equal((await chat(gw.url, secret)).status, 200);
      assert.equal((await gateway(["keys", "revoke", `new-${name}`])).status, 0);
      assert.deepEqual(await chat(gw.url, secret), { status: 401, version: (await chat(gw.url, ACME)).version, code: "invalid_api_key" });
    });

    test("roles are separate and bad credentials are refused", async () => {
      const read = (key) => admin(gw.url, "GET", "/policy", undefined, key);
      assert.equal((await read(ACME)).status, 403, "an invoke key cannot read policy");
      assert.equal((await admin(gw.url, "POST", "/policy/publish", { policy: doc(1) }, ACME)).status, 403);
      assert.equal((await chat(gw.url, WRITER)).code, "permission_denied", "an admin key cannot invoke models");
      assert.equal((await chat(gw.url, ADMIN_KEY)).status, 401, "nor can the bootstrap key");
      assert.equal((await chat(gw.url, EXPIRED)).code, "invalid_api_key");
      assert.equal((await read("sk-e2e-policy-unknown")).status, 401);
      assert.equal((await read(WRITER)).status, 200);
    });
  });
}

describe("policy store faults and local state in workerd", () => {
  test("a KV outage keeps the last good policy serving and is visible in telemetry", async () => {
    const gw = await startWorkerd({ policy: doc(5), faultyKv: true });
    try {
      const v1 = (await chat(gw.url, ACME)).version;
      await gw.setKvFault(true);
      const during = await chat(gw.url, BETA);
      assert.deepEqual([during.status, during.version], [200, v1]);
      const write = await admin(gw.url, "POST", "/policy/publish", { policy: doc(6) });
      assert.deepEqual([write.status, write.body.error?.code], [503, "store_unavailable"]);
      await new Promise((r) => setTimeout(r, 200));
      const records = gw.lines.filter((l) => l.includes('"policy_fault":"store_unavailable"'));
      assert.ok(records.length >= 1, "the hidden failure is in the request record");
      await gw.setKvFault(false);
      const v2 = await publish(gw.url, doc(6));
      assert.equal((await chat(gw.url, BETA)).version, v2);
    } finally {
      await gw.stop();
    }
  });

  test("the CLI's local target writes the state wrangler dev serves", async () => {
    const state = mkdtempSync(join(dir, "state-"));
    const gw = await startWorkerd({ stateDir: state });
    try {
      assert.equal((await chat(gw.url, ACME)).code, "policy_unavailable", "nothing published yet");
      const env = { EDGEGATE_STATE_DIR: state, WRANGLER: join(ROOT, "node_modules/.bin/wrangler") };
      const published = await cli(["--target", "local", "publish", file("local.json", doc(5)), "--note", "local"], env);
      assert.equal(published.status, 0, published.stderr);
      const version = published.stdout.match(/published ([0-9a-f]{16}) to active/)?.[1];
      assert.deepEqual(await chat(gw.url, ACME), { status: 200, version, code: undefined });
    } finally {
      await gw.stop();
    }
  });
});

describe("the CLI's cloudflare target", () => {
  test("publishes through the Cloudflare KV REST API (simulated), and reports its errors", async () => {
    const api = await startSimulator({ requireKey: "cf-token" });
    try {
      const env = {
        CLOUDFLARE_API_BASE: `${api.url}/client/v4`,
        CLOUDFLARE_ACCOUNT_ID: "acct",
        CLOUDFLARE_API_TOKEN: "cf-token",
        EDGEGATE_KV_NAMESPACE_ID: "ns1",
      };
      const cf = (args, extra = {}) => cli(["--target", "cloudflare", ...args], { ...env, ...extra });
      const published = await cf(["publish", file("cf-v1.json", doc(5)), "--note", "first"]);
      assert.equal(published.status, 0, published.stderr);
      const v1 = published.stdout.match(/published ([0-9a-f]{16}) to active/)?.[1];
      const value = async (key) => {
        const res = await fetch(`${api.url}/client/v4/accounts/acct/storage/kv/namespaces/ns1/values/${encodeURIComponent(key)}`, {
          headers: { authorization: "Bearer cf-token" },
        });
        return res.ok ? res.json() : null;
      };
      assert.equal((await value("policy/active")).version, v1);
      assert.deepEqual((await value(`policy/versions/${v1}`)).tenants[0], { id: "acme", limits: { requests_per_minute: 5 } });

      assert.equal((await cf(["publish", file("cf-v2.json", doc(7)), "--canary-percent", "10"])).status, 0);
      const v2 = (await value("policy/canary")).version;
      assert.equal((await cf(["rollback"])).status, 1, "nothing to roll back to yet");
      assert.equal((await cf(["promote"])).status, 0);
      assert.deepEqual(await value("policy/active").then((a) => [a.version, a.previous]), [v2, [v1]]);
      assert.equal(await value("policy/canary"), null, "promote ends the canary");

      const denied = await cf(["history"], { CLOUDFLARE_API_TOKEN: "wrong" });
      assert.equal(denied.status, 1);
      assert.match(denied.stderr, /Cloudflare API read answered 403: Authentication error/);
      const unset = await cf(["history"], { EDGEGATE_KV_NAMESPACE_ID: "" });
      assert.equal(unset.status, 2);
      assert.match(unset.stderr, /EDGEGATE_KV_NAMESPACE_ID is not set/);
    } finally {
      await api.stop();
    }
  });
});

// JSON Web Tokens signed here with Node's own crypto, verified by the built wasm.
const b64u = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");
const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
const ec = generateKeyPairSync("ec", { namedCurve: "P-256" });
const now = () => Math.floor(Date.now() / 1000);

function jwt(header, claims, key, alg = header.alg) {
  const input = `${b64u(header)}.${b64u(claims)}`;
  const sig =
    alg === "RS256"
      ? cryptoSign("sha256", Buffer.from(input), key)
      : alg === "ES256"
        ? cryptoSign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" })
        : Buffer.alloc(0);
  return `${input}.${sig.toString("base64url")}`;
}

function jwtPolicy() {
  const p = doc(5);
  const { n, e } = rsa.publicKey.export({ format: "jwk" });
  const { x, y } = ec.publicKey.export({ format: "jwk" });
  p.jwt_issuers = [
    {
      id: "idp",
      issuer: "https://idp.e2e",
      audiences: ["edgegate"],
      algorithms: ["RS256", "ES256"],
      keys: [
        { kid: "r1", kty: "RSA", n, e },
        { kid: "e1", kty: "EC", crv: "P-256", x, y },
      ],
    },
  ];
  return p;
}

for (const [name, start] of Object.entries(runtimes)) {
  test(`JSON Web Tokens on ${name}: accepted when valid, 401 for none, expired, unknown kid, wrong audience`, async () => {
    const gw = await start(jwtPolicy());
    try {
      const claims = (extra = {}) => ({ iss: "https://idp.e2e", aud: "edgegate", sub: "u1", tenant: "beta", exp: now() + 600, ...extra });
      const ok1 = await chat(gw.url, jwt({ alg: "RS256", kid: "r1", typ: "JWT" }, claims(), rsa.privateKey));
      const ok2 = await chat(gw.url, jwt({ alg: "ES256", kid: "e1", typ: "JWT" }, claims(), ec.privateKey));
      assert.deepEqual([ok1.status, ok2.status], [200, 200]);
      const refused = async (token) => {
        const r = await chat(gw.url, token);
        return [r.status, r.code];
      };
      const expected = [401, "invalid_token"];
      assert.deepEqual(await refused(jwt({ alg: "none", typ: "JWT" }, claims(), null)), expected, "alg none");
      assert.deepEqual(await refused(jwt({ alg: "RS256", kid: "r1" }, claims({ exp: now() - 3600 }), rsa.privateKey)), expected, "expired");
      assert.deepEqual(await refused(jwt({ alg: "RS256", kid: "r9" }, claims(), rsa.privateKey)), expected, "unknown kid");
      assert.deepEqual(await refused(jwt({ alg: "RS256", kid: "r1" }, claims({ aud: "other" }), rsa.privateKey)), expected, "audience");
      const forged = `${b64u({ alg: "RS256", kid: "r1" })}.${b64u(claims({ tenant: "acme" }))}.${jwt({ alg: "RS256", kid: "r1" }, claims(), rsa.privateKey).split(".")[2]}`;
      assert.deepEqual(await refused(forged), expected, "a signature over other claims");
      const denied = await admin(gw.url, "GET", "/policy", undefined, jwt({ alg: "RS256", kid: "r1" }, claims(), rsa.privateKey));
      assert.equal(denied.status, 403, "a token with only invoke cannot read policy");
    } finally {
      await gw.stop();
    }
  });
}

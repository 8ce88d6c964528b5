// Waits for the local gateway, then publishes a policy through its admin API.
// Usage: node deploy/local/publish-demo.mjs URL ADMIN_KEY POLICY_FILE
import { readFileSync } from "node:fs";

const [url, key, file] = process.argv.slice(2);
const policy = JSON.parse(readFileSync(file, "utf8"));
const deadline = Date.now() + 300_000;
for (;;) {
  try {
    if ((await fetch(`${url}/healthz`)).ok) break;
  } catch {}
  if (Date.now() > deadline) {
    console.error("[edgegate] the gateway did not start; the demo policy was not published");
    process.exit(1);
  }
  await new Promise((r) => setTimeout(r, 500));
}
const res = await fetch(`${url}/admin/policy/publish`, {
  method: "POST",
  headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
  body: JSON.stringify({ policy, note: "demo policy (npm run dev)" }),
});
const body = await res.text();
console.error(res.ok ? `[edgegate] demo policy published: ${body}` : `[edgegate] publishing the demo policy failed: ${res.status} ${body}`);
process.exit(res.ok ? 0 : 1);

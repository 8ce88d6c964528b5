// The policy and keys both end-to-end suites run against.

import { startWorkerd, startSpin, sha256 } from "./lib.mjs";

export const KEY = "sk-e2e-main";
export const LIMITED_KEY = "sk-e2e-limited";
export const RACE_KEY = "sk-e2e-race";
export const SCOPED_KEY = "sk-e2e-scoped";
export const SIM_SECRET = "sk-sim-upstream-secret";
export const LIMIT = 3;
export const RACE_LIMIT = 10;
export const PY_LIMITED_KEY = "sk-e2e-py-limited";
export const AWS_CREDENTIALS = "AKIDSIM:sim-secret-access-key";
export const REVOKED_SECRET = "sk-sim-revoked";

export function policy(simUrl) {
  const sim = (id, extra = {}) => ({ id, kind: "openai_compatible", base_url: `${simUrl}/v1`, api_key_secret: "PROVIDER_API_KEY", ...extra });
  return {
    tenants: [
      { id: "main" },
      { id: "limited", limits: { requests_per_minute: LIMIT } },
      { id: "race", limits: { requests_per_minute: RACE_LIMIT } },
      { id: "py-limited", limits: { requests_per_minute: 2 } },
    ],
    keys: [
      { id: "main-key", tenant: "main", hash: sha256(KEY) },
      { id: "limited-key", tenant: "limited", hash: sha256(LIMITED_KEY), models: ["mock"] },
      { id: "race-key", tenant: "race", hash: sha256(RACE_KEY), models: ["mock"] },
      { id: "scoped-key", tenant: "main", hash: sha256(SCOPED_KEY), models: ["mock"] },
      { id: "py-limited-key", tenant: "py-limited", hash: sha256(PY_LIMITED_KEY), models: ["mock"] },
    ],
    providers: [
      { id: "builtin", kind: "mock" },
      sim("sim"),
      { ...sim("sim-anthropic"), kind: "anthropic" },
      { ...sim("sim-azure"), kind: "azure_openai", base_url: simUrl, api_version: "2024-10-21" },
      { ...sim("sim-gemini"), kind: "gemini", base_url: `${simUrl}/v1beta` },
      { id: "sim-bedrock", kind: "bedrock", base_url: simUrl, region: "us-east-1", api_key_secret: "AWS_CREDENTIALS" },
      { id: "workers-ai", kind: "workers_ai" },
      { id: "closed", kind: "openai_compatible", base_url: "http://127.0.0.1:9/v1" },
      // Mid-rotation: the first credential is revoked (the simulator refuses it), the second is live.
      { ...sim("sim-rotating"), api_key_secret: "PROVIDER_API_KEY_OLD", api_key_secret_secondary: "PROVIDER_API_KEY" },
    ],
    models: [
      { alias: "mock", targets: [{ provider: "builtin", model: "mock-1" }] },
      { alias: "sim-chat", targets: [{ provider: "sim", model: "sim-model-1" }] },
      { alias: "sim-quota", targets: [{ provider: "sim", model: "sim-quota-model" }] },
      { alias: "sim-embed", targets: [{ provider: "sim", model: "text-embedding-sim" }] },
      { alias: "azure", targets: [{ provider: "sim-azure", model: "gpt4o-eu-deployment" }] },
      { alias: "gemini", targets: [{ provider: "sim-gemini", model: "gemini-sim" }] },
      { alias: "bedrock", targets: [{ provider: "sim-bedrock", model: "anthropic.claude-sim-v1:0" }] },
      { alias: "workers-ai", targets: [{ provider: "workers-ai", model: "@cf/meta/llama-3.1-8b-instruct" }] },
      { alias: "claude", targets: [{ provider: "sim-anthropic", model: "claude-sim-1" }] },
      { alias: "stream-failover", targets: [{ provider: "sim", model: "flaky sim:cut=0" }, { provider: "sim-anthropic", model: "cut sim:cut=0" }, { provider: "sim", model: "sim-backup" }] },
      { alias: "failover", targets: [{ provider: "sim", model: "flaky sim:status=503" }, { provider: "sim", model: "sim-backup" }] },
      { alias: "all-down", targets: [{ provider: "sim", model: "down sim:status=500" }, { provider: "closed", model: "x" }] },
      { alias: "unreachable", targets: [{ provider: "closed", model: "x" }] },
      { alias: "rotating", targets: [{ provider: "sim-rotating", model: "sim-model-1" }] },
    ],
    settings: { policy_refresh_seconds: 0 },
  };
}

export const runtimes = {
  workerd: (p) => startWorkerd({ policy: p, secrets: { PROVIDER_API_KEY: SIM_SECRET, AWS_CREDENTIALS, PROVIDER_API_KEY_OLD: REVOKED_SECRET } }),
  spin: (p) =>
    startSpin({ policy: p, variables: { provider_api_key: SIM_SECRET, aws_credentials: AWS_CREDENTIALS, provider_api_key_old: REVOKED_SECRET } }),
};


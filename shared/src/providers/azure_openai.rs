//! Azure OpenAI: the OpenAI wire format behind per-deployment URLs
//! (`{base_url}/openai/deployments/{deployment}/chat/completions?api-version=…`) and an `api-key`
//! header. A target's `model` names the deployment.

use bytes::Bytes;

use super::openai_compatible::OpenAiCompatible;
use super::{Completion, ProviderAdapter, StreamDecoder};
use crate::chat::ChatRequest;
use crate::embeddings::{Embeddings, EmbeddingsRequest};
use crate::error::Error;
use crate::policy::{Provider, Target};

/// The adapter for Azure OpenAI.
#[derive(Debug, Clone, Copy)]
pub struct AzureOpenAi;

/// The API version used when policy names none (a generally available one).
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// Rewrites an OpenAI-style request for a deployment: URL, `api-version`, `api-key` header.
fn for_deployment(
    provider: &Provider,
    target: &Target,
    operation: &str,
    req: http::Request<Bytes>,
    credential: Option<&str>,
) -> Result<http::Request<Bytes>, Error> {
    let version = provider.api_version.as_deref().unwrap_or(DEFAULT_API_VERSION);
    let url = format!("{}/openai/deployments/{}/{operation}?api-version={version}", provider.base_url, target.model);
    let (mut parts, body) = req.into_parts();
    parts.uri = url.parse().map_err(|e| Error::new(crate::ErrorKind::InvalidRequest, format!("deployment URL {url:?} is invalid: {e}")))?;
    parts.headers.remove(http::header::AUTHORIZATION);
    if let Some(key) = credential.and_then(|k| http::HeaderValue::from_str(k).ok()) {
        parts.headers.insert("api-key", key);
    }
    Ok(http::Request::from_parts(parts, body))
}

impl ProviderAdapter for AzureOpenAi {
    fn chat_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &ChatRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let openai = OpenAiCompatible.chat_request(provider, target, req, None)?;
        for_deployment(provider, target, "chat/completions", openai, credential)
    }

    fn chat_response(&self, body: &[u8], created: u64) -> Result<Completion, Error> {
        OpenAiCompatible.chat_response(body, created)
    }

    fn error_message(&self, body: &[u8]) -> Option<String> {
        OpenAiCompatible.error_message(body)
    }

    fn stream_decoder(&self, provider: &Provider, created: u64) -> Box<dyn StreamDecoder> {
        OpenAiCompatible.stream_decoder(provider, created)
    }

    fn embeddings_request(
        &self,
        provider: &Provider,
        target: &Target,
        req: &EmbeddingsRequest,
        credential: Option<&str>,
    ) -> Result<http::Request<Bytes>, Error> {
        let openai = OpenAiCompatible.embeddings_request(provider, target, req, None)?;
        for_deployment(provider, target, "embeddings", openai, credential)
    }

    fn embeddings_response(&self, body: &[u8]) -> Result<Embeddings, Error> {
        OpenAiCompatible.embeddings_response(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ProviderKind;

    #[test]
    fn requests_go_to_the_deployment_with_api_key_and_version() {
        let provider = Provider {
            id: "az".into(),
            kind: ProviderKind::AzureOpenai,
            base_url: "https://acme.openai.azure.com".into(),
            api_key_secret: None,
            api_key_secret_secondary: None,
            api_version: None,
            region: None,
            quirks: Default::default(),
            location: Default::default(),
        };
        let target = Target { provider: "az".into(), model: "gpt4o-eu".into(), ..Target::default() };
        let req =
            ChatRequest::parse(br#"{"model":"alias","messages":[{"role":"user","content":"hi"}]}"#).unwrap_or_else(|e| unreachable!("{e}"));
        let up = AzureOpenAi.chat_request(&provider, &target, &req, Some("az-key")).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(up.uri(), "https://acme.openai.azure.com/openai/deployments/gpt4o-eu/chat/completions?api-version=2024-10-21");
        assert_eq!(up.headers()["api-key"], "az-key");
        assert!(!up.headers().contains_key("authorization"));
        let embed = EmbeddingsRequest::parse(br#"{"model":"e","input":"x"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        let provider = Provider { api_version: Some("2025-01-01-preview".into()), ..provider };
        let up = AzureOpenAi.embeddings_request(&provider, &target, &embed, None).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(up.uri(), "https://acme.openai.azure.com/openai/deployments/gpt4o-eu/embeddings?api-version=2025-01-01-preview");
    }
}

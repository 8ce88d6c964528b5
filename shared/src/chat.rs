//! Canonical chat types: the hub every provider format converts to and from.
//!
//! They follow the OpenAI Chat Completions shape. Fields the gateway does not interpret are kept in
//! `extra` so that they reach providers unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, ErrorKind};

/// A chat completion request as the caller sent it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// Model alias (resolved through policy).
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Whether to answer as a server-sent event stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Every other field, passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: Role,
    /// Text, or an array of content parts; absent on assistant tool-call messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Value>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other field (`name`, `refusal`, …), passed through.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A function call made by the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Call id, echoed by the tool result.
    pub id: String,
    /// Always `function` today.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function and its JSON-encoded arguments.
    pub function: FunctionCall,
}

/// The function part of a [`ToolCall`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    pub name: String,
    /// Arguments as a JSON text.
    #[serde(default)]
    pub arguments: String,
}

fn function_type() -> String {
    "function".into()
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions from the application.
    System,
    /// Instructions from the application (newer OpenAI models).
    Developer,
    /// The end user.
    User,
    /// The model.
    Assistant,
    /// A tool result.
    Tool,
}

impl Role {
    /// The role's name on the wire, as OpenAI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::Developer => "developer",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// Token usage in disjoint buckets, so that nothing is counted or charged twice.
///
/// Providers count differently: OpenAI's `prompt_tokens` include cached tokens and its
/// `completion_tokens` include reasoning tokens; Anthropic's `input_tokens` exclude cache reads and
/// writes. Each provider converts into these buckets, and each dialect converts back out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens read fresh (neither from nor into a cache).
    pub input: u64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read: u64,
    /// Prompt tokens written into the provider's cache.
    pub cache_write: u64,
    /// Visible output tokens.
    pub output: u64,
    /// Hidden reasoning tokens.
    pub reasoning: u64,
}

impl Usage {
    /// All prompt-side tokens (OpenAI's `prompt_tokens`).
    pub fn prompt_tokens(&self) -> u64 {
        self.input + self.cache_read + self.cache_write
    }

    /// All output-side tokens (OpenAI's `completion_tokens`).
    pub fn completion_tokens(&self) -> u64 {
        self.output + self.reasoning
    }

    /// The OpenAI `usage` object.
    pub fn to_openai(&self) -> Value {
        serde_json::json!({
            "prompt_tokens": self.prompt_tokens(),
            "completion_tokens": self.completion_tokens(),
            "total_tokens": self.prompt_tokens() + self.completion_tokens(),
            "prompt_tokens_details": {"cached_tokens": self.cache_read},
            "completion_tokens_details": {"reasoning_tokens": self.reasoning},
        })
    }

    /// The Anthropic `usage` object.
    pub fn to_anthropic(&self) -> Value {
        serde_json::json!({
            "input_tokens": self.input,
            "cache_creation_input_tokens": self.cache_write,
            "cache_read_input_tokens": self.cache_read,
            "output_tokens": self.completion_tokens(),
        })
    }
}

/// Most messages one request may carry.
pub const MAX_MESSAGES: usize = 2048;
/// Most tools one request may offer (OpenAI's own limit).
pub const MAX_TOOLS: usize = 128;

impl ChatRequest {
    /// Refuses requests over the gateway's size limits, naming the field and the limit.
    /// (Bodies over [`crate::MAX_REQUEST_BYTES`] are refused before parsing, and JSON nested
    /// deeper than 128 levels fails to parse.)
    pub fn check_limits(&self) -> Result<(), Error> {
        if self.messages.len() > MAX_MESSAGES {
            return Err(Error::new(
                ErrorKind::InvalidRequest,
                format!("too many messages: {} (at most {MAX_MESSAGES})", self.messages.len()),
            )
            .with_param("messages"));
        }
        let tools = self.extra.get("tools").and_then(Value::as_array).map_or(0, Vec::len);
        if tools > MAX_TOOLS {
            return Err(Error::new(ErrorKind::InvalidRequest, format!("too many tools: {tools} (at most {MAX_TOOLS})")).with_param("tools"));
        }
        Ok(())
    }

    /// Parses and checks a request body. Syntax errors are `invalid_json`; everything else that
    /// makes the body unusable is `invalid_request` naming the field at fault.
    pub fn parse(body: &[u8]) -> Result<Self, Error> {
        let req: ChatRequest = serde_json::from_slice(body).map_err(|e| {
            let kind = if e.is_data() { ErrorKind::InvalidRequest } else { ErrorKind::InvalidJson };
            let what = if e.is_data() { "invalid request body" } else { "request body is not valid JSON" };
            Error::new(kind, format!("{what}: {e}"))
        })?;
        if req.model.is_empty() {
            return Err(Error::new(ErrorKind::InvalidRequest, "`model` must not be empty").with_param("model"));
        }
        if req.messages.is_empty() {
            return Err(Error::new(ErrorKind::InvalidRequest, "`messages` must contain at least one message").with_param("messages"));
        }
        Ok(req)
    }

    /// The prompt's tokens for a model of `encoding`: exact for the texts the model reads (each
    /// message's role, content, name and tool calls, counted as OpenAI documents for chat: 3 a
    /// message and 3 to prime the answer), with tool definitions counted as their JSON (OpenAI
    /// renders them in a format of its own, so that part is close, not exact). Without an
    /// encoding (models tiktoken does not know), [`Self::estimate_prompt_tokens`]. The count is
    /// the sum of [`Message::tokens`] and a part for the rest of the request.
    pub fn prompt_tokens(&self, encoding: Option<crate::tokenizer::Encoding>) -> u64 {
        self.rest_tokens(encoding) + self.messages.iter().map(|m| m.tokens(encoding)).sum::<u64>()
    }

    /// The prompt's tokens outside its messages: the tool definitions, and (counted exactly)
    /// the 3 that prime the answer.
    fn rest_tokens(&self, encoding: Option<crate::tokenizer::Encoding>) -> u64 {
        let tools = self.extra.get("tools").map(Value::to_string);
        match encoding {
            Some(enc) => 3 + tools.map_or(0, |t| enc.count(&t) as u64),
            None => tools.map_or(0, |t| (t.chars().count() as u64).div_ceil(4)),
        }
    }

    /// An estimate of the prompt's tokens: about four characters a token over every text the model
    /// reads (messages, tool calls, tool definitions), plus a few per message. Used where no
    /// provider or encoding can count exactly.
    pub fn estimate_prompt_tokens(&self) -> u64 {
        self.prompt_tokens(None)
    }

    /// Drops the oldest turns of the conversation until its prompt is at most `max` tokens (by
    /// [`Self::prompt_tokens`] for `encoding`). A turn is a user message and every message after
    /// it up to the next user message, so tool results leave with the calls they answer and the
    /// conversation still starts with a user message. System and developer messages and the last
    /// turn always stay. Returns how many messages were dropped and the prompt's tokens after,
    /// which are still over `max` when what always stays is over it.
    pub fn drop_oldest_turns(&mut self, encoding: Option<crate::tokenizer::Encoding>, max: u64) -> (usize, u64) {
        // Each message is counted once; the total is the same sum `prompt_tokens` makes.
        let counts: Vec<u64> = self.messages.iter().map(|m| m.tokens(encoding)).collect();
        let mut total = self.rest_tokens(encoding) + counts.iter().sum::<u64>();
        let instruction = |m: &Message| matches!(m.role, Role::System | Role::Developer);
        let last_turn = self.messages.iter().rposition(|m| m.role == Role::User).unwrap_or(0);
        let mut keep = vec![true; self.messages.len()];
        let mut i = 0;
        while total > max && i < last_turn {
            // One turn: up to the next user message (messages before the first user message
            // count as a turn of their own).
            let end = (i + 1..last_turn).find(|&j| self.messages[j].role == Role::User).unwrap_or(last_turn);
            for j in (i..end).filter(|&j| !instruction(&self.messages[j])) {
                keep[j] = false;
                total -= counts[j];
            }
            i = end;
        }
        let mut flags = keep.iter();
        self.messages.retain(|_| flags.next().copied().unwrap_or(true));
        (keep.iter().filter(|k| !**k).count(), total)
    }

    /// The output cap the caller set (`max_completion_tokens`, else `max_tokens`), if any.
    pub fn max_output_tokens(&self) -> Option<u64> {
        self.extra.get("max_completion_tokens").or_else(|| self.extra.get("max_tokens")).and_then(Value::as_u64)
    }

    /// Refuses `n` > 1 for providers that answer with one choice, rather than silently
    /// returning fewer choices than asked for.
    pub fn require_single_choice(&self, provider_kind: &str) -> Result<(), Error> {
        match self.extra.get("n").and_then(Value::as_u64) {
            Some(n) if n > 1 => {
                Err(Error::new(ErrorKind::InvalidRequest, format!("`n` > 1 is not supported by {provider_kind} models")).with_param("n"))
            }
            _ => Ok(()),
        }
    }

    /// Whether the caller asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// Whether the caller asked for the final usage chunk of a stream.
    pub fn wants_stream_usage(&self) -> bool {
        self.extra.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool).unwrap_or(false)
    }
}

impl Message {
    /// The message's part of [`ChatRequest::prompt_tokens`] for `encoding`: exact with one (3,
    /// its role, its text, its name and its tool calls), else about four characters a token plus 3.
    pub fn tokens(&self, encoding: Option<crate::tokenizer::Encoding>) -> u64 {
        let calls = self.tool_calls.iter().flatten();
        match encoding {
            Some(enc) => {
                let count = |s: &str| enc.count(s) as u64;
                3 + count(self.role.as_str())
                    + count(&self.text())
                    + self.extra.get("name").and_then(Value::as_str).map_or(0, |n| 1 + count(n))
                    + calls.map(|c| count(&c.function.name) + count(&c.function.arguments)).sum::<u64>()
            }
            None => {
                let chars = self.text().chars().count() + calls.map(|c| c.function.name.len() + c.function.arguments.len()).sum::<usize>();
                (chars as u64).div_ceil(4) + 3
            }
        }
    }

    /// The message's text: the string content, or its text parts joined by newlines.
    pub fn text(&self) -> String {
        match &self.content {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("\n"),
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(body: &str, expect: Result<(), (&str, Option<&str>)>) {
        let got = ChatRequest::parse(body.as_bytes()).map(|_| ()).map_err(|e| (e.metric_label(), e.param));
        let expect = expect.map_err(|(c, p)| (c, p.map(str::to_owned)));
        assert_eq!(got, expect, "{body}");
    }

    #[test]
    fn parse_classifies_every_bad_body() {
        check(r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, Ok(()));
        check(r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}]}"#, Ok(()));
        check(r#"{"model":"m","messages":[{"role":"assistant","tool_calls":[]}]}"#, Ok(()));
        check("", Err(("invalid_json", None)));
        check("{", Err(("invalid_json", None)));
        check("not json", Err(("invalid_json", None)));
        check("[]", Err(("invalid_request", None)));
        check(r#"{"messages":[{"role":"user","content":"hi"}]}"#, Err(("invalid_request", None)));
        check(r#"{"model":"m"}"#, Err(("invalid_request", None)));
        check(r#"{"model":"m","messages":[]}"#, Err(("invalid_request", Some("messages"))));
        check(r#"{"model":"","messages":[{"role":"user","content":"x"}]}"#, Err(("invalid_request", Some("model"))));
        check(r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#, Err(("invalid_request", None)));
        check(r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#, Err(("invalid_request", None)));
        check(r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, Err(("invalid_request", None)));
    }

    #[test]
    fn limits_name_the_field_and_deep_nesting_is_a_json_error() {
        let many = |n: usize, field: &str| {
            let items: Vec<Value> = (0..n)
                .map(|_| {
                    if field == "messages" {
                        serde_json::json!({"role": "user", "content": "x"})
                    } else {
                        serde_json::json!({"type": "function", "function": {"name": "f"}})
                    }
                })
                .collect();
            let mut body = serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
            body[field] = Value::Array(items);
            ChatRequest::parse(body.to_string().as_bytes()).and_then(|r| r.check_limits()).map_err(|e| (e.metric_label(), e.param))
        };
        assert_eq!(many(MAX_MESSAGES, "messages"), Ok(()));
        assert_eq!(many(MAX_MESSAGES + 1, "messages"), Err(("invalid_request", Some("messages".into()))));
        assert_eq!(many(MAX_TOOLS, "tools"), Ok(()));
        assert_eq!(many(MAX_TOOLS + 1, "tools"), Err(("invalid_request", Some("tools".into()))));
        let deep =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"x"}}],"metadata":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        assert_eq!(ChatRequest::parse(deep.as_bytes()).map_err(|e| e.metric_label()).err(), Some("invalid_json"));
    }

    fn conversation() -> ChatRequest {
        let body = serde_json::json!({"model": "m", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "first question ".repeat(20)},
            {"role": "assistant", "content": "first answer ".repeat(20)},
            {"role": "user", "content": "what is the weather"},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "developer", "content": "Answer in metric units."},
            {"role": "tool", "tool_call_id": "c1", "content": "rain, 4 degrees ".repeat(10)},
            {"role": "assistant", "content": "Rain and 4 degrees."},
            {"role": "user", "content": "and tomorrow?"},
            {"role": "assistant", "content": "Let me check"},
        ], "tools": [{"type": "function", "function": {"name": "weather"}}]});
        ChatRequest::parse(body.to_string().as_bytes()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn roles(chat: &ChatRequest) -> Vec<&'static str> {
        chat.messages.iter().map(|m| m.role.as_str()).collect()
    }

    #[test]
    fn truncation_drops_whole_turns_oldest_first_and_keeps_instructions_and_the_last_turn() {
        let enc = Some(crate::tokenizer::Encoding::O200kBase);
        for encoding in [enc, None] {
            let full = conversation();
            let total = full.prompt_tokens(encoding);
            // The prompt is the sum of its messages' parts and the rest of the request.
            let parts: u64 = full.messages.iter().map(|m| m.tokens(encoding)).sum();
            assert!(parts < total, "{parts} of {total}");
            // Under the cap: nothing changes.
            let mut chat = full.clone();
            assert_eq!(chat.drop_oldest_turns(encoding, total), (0, total));
            assert_eq!(chat, full);
            // Just over: the greeting before the first question is the oldest turn.
            let mut chat = full.clone();
            let (dropped, after) = chat.drop_oldest_turns(encoding, total - 1);
            assert_eq!((dropped, after), (1, total - full.messages[1].tokens(encoding)));
            assert_eq!(roles(&chat)[..2], ["system", "user"]);
            // Further: the first question and its answer go together, then the tool turn, whose
            // developer message stays.
            let mut chat = full.clone();
            let without_first: u64 = full.messages[1..4].iter().map(|m| m.tokens(encoding)).sum();
            let (dropped, after) = chat.drop_oldest_turns(encoding, total - without_first);
            assert_eq!((dropped, after), (3, total - without_first));
            assert_eq!(roles(&chat), ["system", "user", "assistant", "developer", "tool", "assistant", "user", "assistant"]);
            let mut chat = full.clone();
            let (dropped, after) = chat.drop_oldest_turns(encoding, total - without_first - 1);
            assert_eq!(dropped, 7);
            assert_eq!(roles(&chat), ["system", "developer", "user", "assistant"]);
            assert_eq!(after, chat.prompt_tokens(encoding), "the count returned is the prompt's count");
            // What always stays is over a tiny cap: everything else is gone and the count says so.
            let mut chat = full.clone();
            let (dropped, after) = chat.drop_oldest_turns(encoding, 1);
            assert_eq!((dropped, roles(&chat).len()), (7, 4));
            assert!(after > 1);
        }
    }

    #[test]
    fn truncation_of_a_conversation_without_user_messages_or_earlier_turns_drops_nothing() {
        for body in [
            serde_json::json!([{"role": "system", "content": "s"}, {"role": "assistant", "content": "long ".repeat(50)}]),
            serde_json::json!([{"role": "system", "content": "s"}, {"role": "user", "content": "long ".repeat(50)}]),
        ] {
            let mut chat = ChatRequest::parse(serde_json::json!({"model": "m", "messages": body}).to_string().as_bytes())
                .unwrap_or_else(|e| unreachable!("{e}"));
            let before = chat.clone();
            assert_eq!(chat.drop_oldest_turns(None, 5), (0, before.prompt_tokens(None)));
            assert_eq!(chat, before);
        }
    }

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"ann"}],"seed":7,"logit_bias":{"1":2}}"#;
        let req = ChatRequest::parse(body.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        let back: Value = serde_json::to_value(&req).unwrap_or_default();
        let orig: Value = serde_json::from_str(body).unwrap_or_default();
        assert_eq!(back, orig);
    }
}

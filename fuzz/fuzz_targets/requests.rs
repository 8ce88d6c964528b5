//! Request bodies in both dialects, count-tokens and embeddings: parsing and the request limits
//! never panic, whatever the bytes; a parsed chat survives the firewall's text listing.
#![no_main]

use edgegate_core::chat::ChatRequest;
use edgegate_core::dialect::{Dialect, anthropic::Anthropic, openai::OpenAi};
use edgegate_core::embeddings::EmbeddingsRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for dialect in [&OpenAi as &dyn Dialect, &Anthropic] {
        if let Ok(chat) = dialect.parse_chat(data) {
            let _ = chat.check_limits();
            let _ = edgegate_core::firewall::inspect(&chat);
            let _ = chat.estimate_prompt_tokens();
        }
    }
    let _ = ChatRequest::parse(data);
    let _ = edgegate_core::dialect::anthropic::parse_count_tokens(data);
    if let Ok(e) = EmbeddingsRequest::parse(data) {
        let _ = e.texts();
        let _ = e.estimate_tokens();
    }
});

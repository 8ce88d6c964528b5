//! Request bodies in both dialects, count-tokens and embeddings: parsing, the request limits and
//! token counting never panic, whatever the bytes; a parsed chat survives the firewall's text
//! listing; the tokenizer's count is the length of its encoding.
#![no_main]

use edgegate_core::chat::ChatRequest;
use edgegate_core::dialect::{Dialect, anthropic::Anthropic, openai::OpenAi};
use edgegate_core::embeddings::EmbeddingsRequest;
use edgegate_core::tokenizer::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for dialect in [&OpenAi as &dyn Dialect, &Anthropic] {
        if let Ok(chat) = dialect.parse_chat(data) {
            let _ = chat.check_limits();
            let _ = edgegate_core::firewall::inspect(&chat);
            let _ = chat.prompt_tokens(None);
            let _ = chat.prompt_tokens(Some(Encoding::O200kBase));
        }
    }
    let _ = ChatRequest::parse(data);
    let _ = edgegate_core::dialect::anthropic::parse_count_tokens(data);
    if let Ok(e) = EmbeddingsRequest::parse(data) {
        let _ = e.texts();
        let _ = e.input_tokens(Some(Encoding::Cl100kBase));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        for enc in [Encoding::O200kBase, Encoding::Cl100kBase] {
            assert_eq!(enc.count(text), enc.encode(text).len());
        }
    }
});

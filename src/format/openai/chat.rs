//! `format = "openai_chat"`: one chat-completions message per event, one
//! JSON line each, with its provenance in `metadata` (see the parent module
//! for the conventions).

use super::map_event;
use crate::event::StoredEvent;
use crate::format::Encoder;

pub struct OpenAiChat;

impl Encoder for OpenAiChat {
    fn write_event(&self, event: &StoredEvent, out: &mut Vec<u8>) {
        serde_json::to_writer(&mut *out, &map_event(event)).expect("writing to memory");
        out.push(b'\n');
    }
}

//! `format = "openai_sessions"`: one JSON line per finished session,
//! `{"messages": [...], "tools": [...], "metadata": {...}}`, the shape
//! OpenAI fine-tuning and Hugging Face chat datasets read directly.
//!
//! Built from the session's events in seq order with the parent module's
//! conventions, then made into a valid conversation:
//! - consecutive tool calls of one assistant turn (same agent, no other
//!   message or tool result between them) become one assistant message with
//!   several `tool_calls`; an assistant text followed by calls keeps both;
//! - each call is followed by its result, paired by call id and placed in
//!   call order, wherever the result arrived;
//! - a reasoning event gives its text to the assistant message that follows
//!   as `reasoning_content` (alone, it is an assistant message of its own);
//! - calls without a result are left out of `tool_calls`, results without a
//!   call are left out of `messages`, and events the conventions do not map
//!   (lifecycle, unknown types) are not messages: all of them are listed in
//!   `metadata`, never dropped silently;
//! - with more than one agent, assistant messages carry the agent as `name`.
//!
//! Pure and deterministic: the same events and [`SessionInfo`] always give
//! the same bytes, so a retried object is the same object.

use super::{map_event, Content, Message, ToolCall};
use crate::event::StoredEvent;
use crate::format::Encoder;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// What the line says about the session besides its events.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo<'a> {
    pub session_id: Option<&'a str>,
    /// The terminal event type, or `idle`.
    pub ended_by: Option<&'a str>,
    /// `(number, last)` when the session is written in parts.
    pub part: Option<(i64, bool)>,
    /// Events the outbox no longer held (evicted by `drop_oldest`).
    pub lost_events: i64,
}

/// The wire shape of one message: the chat-completions fields only.
#[derive(Serialize)]
struct Wire<'m, 'a> {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'m str>,
    content: &'m Option<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'m Content<'a>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    tool_calls: &'m [ToolCall],
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'m str>,
}

#[derive(Serialize)]
struct Line<'m, 'a> {
    messages: Vec<Wire<'m, 'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<&'a RawValue>,
    metadata: Metadata<'m>,
}

#[derive(Debug, Serialize, PartialEq)]
struct Seen {
    seq: i64,
    #[serde(rename = "type")]
    event_type: String,
}

#[derive(Debug, Serialize)]
struct UnpairedCall {
    seq: i64,
    id: String,
    name: String,
}

#[derive(Debug, Serialize)]
struct UnpairedResult {
    seq: i64,
    tool_call_id: String,
}

#[derive(Debug, Serialize)]
struct Note {
    seq: i64,
    note: String,
}

#[derive(Serialize)]
struct Metadata<'m> {
    session_id: Option<&'m str>,
    agents: Vec<String>,
    run_ids: Vec<String>,
    first_seq: Option<i64>,
    last_seq: Option<i64>,
    first_time: Option<String>,
    last_time: Option<String>,
    events: usize,
    ended_by: Option<&'m str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    part: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_part: Option<bool>,
    #[serde(skip_serializing_if = "is_zero")]
    lost_events: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unpaired_tool_calls: Vec<UnpairedCall>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unpaired_tool_results: Vec<UnpairedResult>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unmapped: Vec<Seen>,
    /// Where events departed from the conventions (see the parent module).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<Note>,
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// An assistant message that calls tools, with the results found for each
/// call (same order as `message.tool_calls`) and the seq of each call.
struct Turn<'a> {
    message: Message<'a>,
    call_seqs: Vec<i64>,
    results: Vec<Option<Message<'a>>>,
}

enum Item<'a> {
    Plain(Message<'a>),
    Turn(Turn<'a>),
}

/// Whether an event type is a conversation event of the conventions.
fn is_conversation(event_type: &str) -> bool {
    matches!(
        event_type,
        "message" | "tool.call" | "tool.result" | "reasoning"
    )
}

fn push_unique(list: &mut Vec<String>, value: Option<&String>) {
    if let Some(value) = value {
        if !list.contains(value) {
            list.push(value.clone());
        }
    }
}

/// Tool definitions an event carries in `data.tools`, keyed by name.
fn tool_definitions(body: &str) -> Vec<(String, &RawValue)> {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        tools: Option<Vec<&'a RawValue>>,
    }
    let tools = serde_json::from_str::<Top>(body)
        .ok()
        .and_then(|top| top.data)
        .filter(|data| data.get().starts_with('{'))
        .and_then(|data| serde_json::from_str::<Data>(data.get()).ok())
        .and_then(|data| data.tools)
        .unwrap_or_default();
    tools
        .into_iter()
        .map(|tool| {
            let value: serde_json::Value = serde_json::from_str(tool.get()).unwrap_or_default();
            let name = value
                .pointer("/function/name")
                .or_else(|| value.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or_default()
                .to_string();
            (name, tool)
        })
        .collect()
}

/// Appends the session line for `events` (one session's, in seq order).
/// A session without a single conversation message (only lifecycle events,
/// or every event lost) writes nothing: an empty conversation is not a
/// training example. Returns whether a line was written.
pub fn write_session(events: &[StoredEvent], info: &SessionInfo, out: &mut Vec<u8>) -> bool {
    let mut metadata = Metadata {
        session_id: info.session_id,
        agents: Vec::new(),
        run_ids: Vec::new(),
        first_seq: events.first().map(|e| e.seq),
        last_seq: events.last().map(|e| e.seq),
        first_time: None,
        last_time: None,
        events: events.len(),
        ended_by: info.ended_by,
        part: info.part.map(|(number, _)| number),
        last_part: info.part.map(|(_, last)| last),
        lost_events: info.lost_events,
        unpaired_tool_calls: Vec::new(),
        unpaired_tool_results: Vec::new(),
        unmapped: Vec::new(),
        notes: Vec::new(),
    };
    let mut tools: Vec<(String, &RawValue)> = Vec::new();
    let mut items: Vec<Item> = Vec::new();
    // Calls waiting for their result: call id → (item, call index).
    let mut open_calls: HashMap<String, (usize, usize)> = HashMap::new();
    // The assistant turn new tool calls of the same agent join, if any.
    let mut joinable: Option<usize> = None;
    let mut reasoning: Option<Message> = None;

    for event in events {
        let body = std::str::from_utf8(&event.body).unwrap_or("");
        for (name, tool) in tool_definitions(body) {
            match tools.iter_mut().find(|(known, _)| *known == name) {
                Some(slot) => slot.1 = tool,
                None => tools.push((name, tool)),
            }
        }
        let mut message = map_event(event);
        push_unique(&mut metadata.agents, message.metadata.agent_id.as_ref());
        push_unique(&mut metadata.run_ids, message.metadata.run_id.as_ref());
        if metadata.first_time.is_none() {
            metadata.first_time = message.metadata.time.clone();
        }
        if message.metadata.time.is_some() {
            metadata.last_time = message.metadata.time.clone();
        }
        if !is_conversation(&event.event_type) {
            metadata.unmapped.push(Seen {
                seq: event.seq,
                event_type: event.event_type.clone(),
            });
            continue;
        }
        if let Some(note) = message.metadata.note.take() {
            metadata.notes.push(Note {
                seq: event.seq,
                note,
            });
        }
        match message.role {
            "tool" => {
                joinable = None;
                let id = message.tool_call_id.clone().unwrap_or_default();
                match open_calls.remove(&id) {
                    Some((item, call)) => {
                        if let Item::Turn(turn) = &mut items[item] {
                            turn.results[call] = Some(message);
                        }
                    }
                    None => metadata.unpaired_tool_results.push(UnpairedResult {
                        seq: event.seq,
                        tool_call_id: id,
                    }),
                }
            }
            "assistant" if event.event_type == "reasoning" => {
                if let Some(earlier) = reasoning.replace(message) {
                    items.push(Item::Plain(earlier));
                }
                joinable = None;
            }
            "assistant" => {
                let agent = message.metadata.agent_id.clone();
                if let Some(thought) = reasoning.take() {
                    if thought.metadata.agent_id == agent {
                        message.reasoning_content = thought.reasoning_content;
                    } else {
                        items.push(Item::Plain(thought));
                    }
                }
                let calls = std::mem::take(&mut message.tool_calls);
                let joins = joinable.filter(|&index| {
                    message.content.is_none()
                        && message.reasoning_content.is_none()
                        && matches!(&items[index], Item::Turn(turn) if turn.message.metadata.agent_id == agent)
                });
                let index = match joins {
                    Some(index) => index,
                    None => {
                        items.push(Item::Turn(Turn {
                            message,
                            call_seqs: Vec::new(),
                            results: Vec::new(),
                        }));
                        joinable = Some(items.len() - 1);
                        items.len() - 1
                    }
                };
                let Item::Turn(turn) = &mut items[index] else {
                    unreachable!("joinable points at a turn")
                };
                for call in calls {
                    let position = turn.message.tool_calls.len();
                    if open_calls
                        .insert(call.id.clone(), (index, position))
                        .is_some()
                    {
                        metadata.notes.push(Note {
                            seq: event.seq,
                            note: format!(
                                "tool call id `{}` is used twice; the later call takes the result",
                                call.id
                            ),
                        });
                    }
                    turn.message.tool_calls.push(call);
                    turn.call_seqs.push(event.seq);
                    turn.results.push(None);
                }
            }
            _ => {
                joinable = None;
                if let Some(thought) = reasoning.take() {
                    items.push(Item::Plain(thought));
                }
                items.push(Item::Plain(message));
            }
        }
    }
    if let Some(thought) = reasoning.take() {
        items.push(Item::Plain(thought));
    }

    let named = metadata.agents.len() > 1;
    let mut messages = Vec::with_capacity(items.len());
    // Calls without results leave the turn; a turn left with nothing to say goes.
    for item in &mut items {
        if let Item::Turn(turn) = item {
            let mut kept = Vec::new();
            let mut results = Vec::new();
            for ((call, seq), result) in turn
                .message
                .tool_calls
                .drain(..)
                .zip(&turn.call_seqs)
                .zip(turn.results.drain(..))
            {
                match result {
                    Some(result) => {
                        kept.push(call);
                        results.push(Some(result));
                    }
                    None => metadata.unpaired_tool_calls.push(UnpairedCall {
                        seq: *seq,
                        id: call.id,
                        name: call.function.name,
                    }),
                }
            }
            turn.message.tool_calls = kept;
            turn.results = results;
        }
    }
    for item in &items {
        match item {
            Item::Plain(message) => messages.push(wire(message, named)),
            Item::Turn(turn) => {
                let message = &turn.message;
                let empty = message.tool_calls.is_empty()
                    && message.reasoning_content.is_none()
                    && message.content.as_ref().is_none_or(is_blank);
                if !empty {
                    messages.push(wire(message, named));
                }
                messages.extend(turn.results.iter().flatten().map(|r| wire(r, named)));
            }
        }
    }
    if messages.is_empty() {
        return false;
    }
    let line = Line {
        messages,
        tools: tools.into_iter().map(|(_, tool)| tool).collect(),
        metadata,
    };
    serde_json::to_writer(&mut *out, &line).expect("writing to memory");
    out.push(b'\n');
    true
}

fn is_blank(content: &Content) -> bool {
    matches!(content, Content::Text(text) if text.is_empty())
}

fn wire<'m, 'a>(message: &'m Message<'a>, named: bool) -> Wire<'m, 'a> {
    let agent_name = (named && message.role == "assistant")
        .then_some(message.metadata.agent_id.as_deref())
        .flatten();
    Wire {
        role: message.role,
        name: message.name.as_deref().or(agent_name),
        content: &message.content,
        reasoning_content: message.reasoning_content.as_ref(),
        tool_calls: &message.tool_calls,
        tool_call_id: message.tool_call_id.as_deref(),
    }
}

/// How many of `events` (the start of a session's remaining events) go in
/// the next part, so that the part's events stay within `max_bytes`. The
/// cut is where no tool call waits for its result, preferably before a user
/// message (a part then starts a turn) when that keeps at least half the
/// limit; failing both, right under the limit; at least one event.
pub fn part_len(events: &[StoredEvent], max_bytes: usize) -> usize {
    let mut bytes = 0usize;
    let mut waiting: Vec<String> = Vec::new();
    let mut clean = 0;
    let mut before_user = (0, 0usize);
    for (index, event) in events.iter().enumerate() {
        let message = is_conversation(&event.event_type).then(|| map_event(event));
        if index > 0 && waiting.is_empty() {
            clean = index;
            if message.as_ref().is_some_and(|m| m.role == "user") {
                before_user = (index, bytes);
            }
        }
        bytes += event.body.len();
        if bytes > max_bytes {
            return match (before_user, clean) {
                ((at, size), _) if at > 0 && size >= max_bytes / 2 => at,
                (_, 0) => index.max(1),
                (_, clean) => clean,
            };
        }
        if let Some(message) = message {
            if message.role == "tool" {
                let id = message.tool_call_id.unwrap_or_default();
                waiting.retain(|waiting| *waiting != id);
            } else {
                waiting.extend(message.tool_calls.into_iter().map(|call| call.id));
            }
        }
    }
    events.len()
}

/// The encoder for events read outside a whole session (a replayed dead
/// letter): one line per session id among them, in order of appearance.
pub struct OpenAiSessions;

impl Encoder for OpenAiSessions {
    /// One event alone is a session of one event (a requeued dead letter).
    fn write_event(&self, event: &StoredEvent, out: &mut Vec<u8>) {
        self.write(std::slice::from_ref(event), out);
    }

    /// A batch is grouped into one line per session.
    fn write(&self, events: &[StoredEvent], out: &mut Vec<u8>) {
        let mut sessions: Vec<Option<&str>> = Vec::new();
        for event in events {
            let id = event.session_id.as_deref();
            if !sessions.contains(&id) {
                sessions.push(id);
            }
        }
        for id in sessions {
            let own: Vec<StoredEvent> = events
                .iter()
                .filter(|e| e.session_id.as_deref() == id)
                .cloned()
                .collect();
            let info = SessionInfo {
                session_id: id,
                ..SessionInfo::default()
            };
            write_session(&own, &info, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::stored_for_test as stored;
    use super::*;
    use serde_json::{json, Value};

    fn say(seq: i64, role: &str, text: &str) -> StoredEvent {
        stored(
            seq,
            json!({"type": "message", "data": {"role": role, "content": text}}),
        )
    }

    fn call(seq: i64, id: &str) -> StoredEvent {
        stored(
            seq,
            json!({"type": "tool.call", "data": {"call_id": id, "name": "f"}}),
        )
    }

    fn result(seq: i64, id: &str) -> StoredEvent {
        stored(
            seq,
            json!({"type": "tool.result", "data": {"call_id": id, "content": "r"}}),
        )
    }

    fn line(events: &[StoredEvent]) -> Value {
        let mut out = Vec::new();
        write_session(events, &SessionInfo::default(), &mut out);
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn parts_are_cut_where_no_call_waits_and_preferably_before_a_user() {
        let text = "x".repeat(100);
        let events = [
            say(1, "user", &text),
            say(2, "assistant", &text),
            say(3, "user", &text),
            call(4, "a"),
            say(5, "assistant", &text),
            result(6, "a"),
            say(7, "assistant", &text),
        ];
        let size = |n: usize| events[..n].iter().map(|e| e.body.len()).sum::<usize>();
        // Everything fits: one part.
        assert_eq!(part_len(&events, size(7)), 7);
        // The limit falls inside the call's wait: cut before the user at 3
        // while that keeps half the limit...
        assert_eq!(part_len(&events, size(4) + 1), 2);
        // ...else at the last point where no call waits (before the call).
        assert_eq!(part_len(&events, size(5)), 3);
        // Past the result, no user ahead: the last clean cut.
        assert_eq!(part_len(&events, size(6) + 10), 6);
        // A single event over the limit still makes a part.
        assert_eq!(part_len(&events, 10), 1);
        // A call that never gets its result: cut right under the limit.
        let waiting = [call(1, "a"), say(2, "user", &text), say(3, "user", &text)];
        let limit = waiting[..2].iter().map(|e| e.body.len()).sum::<usize>();
        assert_eq!(part_len(&waiting, limit), 2);
    }

    #[test]
    fn a_result_before_its_call_or_twice_is_reported_not_sent() {
        let events = [result(1, "a"), call(2, "a"), result(3, "a"), result(4, "a")];
        let line = line(&events);
        let roles: Vec<&str> = line["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["assistant", "tool"]);
        assert_eq!(
            line["metadata"]["unpaired_tool_results"],
            json!([{"seq": 1, "tool_call_id": "a"}, {"seq": 4, "tool_call_id": "a"}])
        );
    }

    #[test]
    fn reasoning_alone_stays_and_a_call_only_turn_without_results_goes() {
        let events = [
            say(1, "user", "q"),
            stored(2, json!({"type": "reasoning", "data": {"content": "hmm"}})),
            say(3, "user", "again"),
            call(4, "lost"),
        ];
        let line = line(&events);
        let messages = line["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1]["reasoning_content"], "hmm");
        assert_eq!(messages[1]["content"], "");
        assert_eq!(
            line["metadata"]["unpaired_tool_calls"],
            json!([{"seq": 4, "id": "lost", "name": "f"}])
        );
    }

    #[test]
    fn a_session_without_conversation_writes_nothing() {
        let lifecycle = [
            stored(1, json!({"type": "session.started"})),
            stored(2, json!({"type": "session.ended"})),
        ];
        let mut out = Vec::new();
        assert!(!write_session(
            &lifecycle,
            &SessionInfo::default(),
            &mut out
        ));
        assert!(!write_session(&[], &SessionInfo::default(), &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn the_same_events_always_give_the_same_bytes() {
        let events = [say(1, "user", "q"), call(2, "a"), result(3, "a")];
        let info = SessionInfo {
            session_id: Some("s"),
            ended_by: Some("idle"),
            part: Some((2, true)),
            lost_events: 3,
        };
        let (mut a, mut b) = (Vec::new(), Vec::new());
        assert!(write_session(&events, &info, &mut a));
        assert!(write_session(&events, &info, &mut b));
        assert_eq!(a, b);
        let line: Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(
            (
                &line["metadata"]["part"],
                &line["metadata"]["last_part"],
                &line["metadata"]["lost_events"]
            ),
            (&json!(2), &json!(true), &json!(3))
        );
    }
}

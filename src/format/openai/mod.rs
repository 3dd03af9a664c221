//! Agent events as OpenAI chat-completions messages: the event-type
//! conventions outboxd understands, shared by the training-record formats.
//!
//! | event type | becomes |
//! |---|---|
//! | `message` | `data.role` (system / user / assistant / tool; `developer` is system) with `data.content`; `data.name`, `data.tool_calls` and `data.tool_call_id` are kept |
//! | `tool.call` | an assistant message with one `tool_calls` entry: `data.call_id`, `data.name`, `data.arguments` (a JSON string; objects are serialised) |
//! | `tool.result` | a tool message: `tool_call_id` from `data.call_id`, `data.content`; `data.name` and `data.is_error` go to `metadata` |
//! | `reasoning` | an assistant message with empty `content` and `reasoning_content` |
//! | anything else (run and session lifecycle, unknown types) | a system message `"<type>: <data>"` |
//!
//! Content is never truncated or rewritten: strings are kept as they are,
//! content-part arrays are passed through, any other JSON is serialised into
//! the string. Where an event does not follow the conventions (no role, no
//! call id) the record says so in `metadata.note` instead of guessing
//! silently. Every record carries its provenance in `metadata`.

pub mod chat;
pub mod sessions;

use crate::event::StoredEvent;
use serde::Serialize;
use serde_json::value::RawValue;
use std::collections::HashMap;

/// One chat-completions message and its provenance.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    pub role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// None is JSON null (an assistant message that only calls tools).
    pub content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<Content<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    pub metadata: Metadata,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Content<'a> {
    Text(String),
    /// Content parts (an array), passed through as they came.
    Parts(&'a RawValue),
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: Function,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Function {
    pub name: String,
    /// Always a string holding JSON, as the API expects.
    pub arguments: String,
}

/// Where a record came from.
#[derive(Debug, Serialize)]
pub struct Metadata {
    pub event_id: Option<String>,
    pub seq: i64,
    #[serde(rename = "type")]
    pub event_type: String,
    pub time: Option<String>,
    pub agent_id: Option<String>,
    pub session_id: Option<String>,
    pub run_id: Option<String>,
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_error: Option<bool>,
    /// How the event departed from the conventions, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

type Fields<'a> = HashMap<String, &'a RawValue>;

fn fields(json: &str) -> Option<Fields<'_>> {
    json.trim_start()
        .starts_with('{')
        .then(|| serde_json::from_str(json).ok())
        .flatten()
}

fn string(raw: Option<&&RawValue>) -> Option<String> {
    raw.and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

fn first_string(data: &Fields, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|name| string(data.get(*name)))
        .filter(|s| !s.is_empty())
}

/// A string as it is; any other JSON (but null) as its text.
fn text_of(raw: &RawValue) -> Option<String> {
    match raw.get() {
        "null" => None,
        json if json.starts_with('"') => serde_json::from_str(json).ok(),
        json => Some(json.to_string()),
    }
}

/// Message content: a string kept, an array of parts passed through, other
/// JSON as its text, missing or null as an empty string.
fn content<'a>(raw: Option<&&'a RawValue>) -> Content<'a> {
    match raw {
        Some(raw) if raw.get().starts_with('[') => Content::Parts(raw),
        Some(raw) => Content::Text(text_of(raw).unwrap_or_default()),
        None => Content::Text(String::new()),
    }
}

/// Maps one stored event; never fails (an event that cannot be read as the
/// conventions expect becomes a system record that says why).
pub fn map_event(event: &StoredEvent) -> Message<'_> {
    let body = std::str::from_utf8(&event.body).unwrap_or("");
    let top = fields(body).unwrap_or_default();
    let metadata = Metadata {
        event_id: string(top.get("id")),
        seq: event.seq,
        event_type: event.event_type.clone(),
        time: string(top.get("time")),
        agent_id: string(top.get("agent_id")),
        session_id: string(top.get("session_id")),
        run_id: string(top.get("run_id")),
        correlation_id: string(top.get("correlation_id")),
        tool_name: None,
        is_error: None,
        note: None,
    };
    let raw_data = top.get("data").copied();
    let data = raw_data
        .and_then(|raw| fields(raw.get()))
        .unwrap_or_default();
    let mut message = Message {
        role: "system",
        name: None,
        content: None,
        reasoning_content: None,
        tool_calls: Vec::new(),
        tool_call_id: None,
        metadata,
    };
    match event.event_type.as_str() {
        "message" => map_message(&mut message, &data),
        "tool.call" => {
            message.role = "assistant";
            let call = tool_call(&data, &mut message.metadata);
            message.tool_calls.push(call);
        }
        "tool.result" => {
            message.role = "tool";
            message.tool_call_id = Some(call_id(&data, &mut message.metadata));
            message.content = Some(content(
                ["content", "output", "result"]
                    .iter()
                    .find_map(|name| data.get(*name)),
            ));
            message.metadata.tool_name = first_string(&data, &["name", "tool"]);
            message.metadata.is_error =
                Some(data.get("is_error").is_some_and(|raw| raw.get() == "true"));
        }
        "reasoning" => {
            message.role = "assistant";
            message.content = Some(Content::Text(String::new()));
            message.reasoning_content = Some(content(data.get("content").or(raw_data.as_ref())));
        }
        other => {
            let text = match raw_data.and_then(text_of) {
                Some(data) => format!("{other}: {data}"),
                None => other.to_string(),
            };
            message.content = Some(Content::Text(text));
        }
    }
    message
}

fn map_message<'a>(message: &mut Message<'a>, data: &Fields<'a>) {
    let role = string(data.get("role"));
    message.role = match role.as_deref() {
        Some("system" | "developer") => "system",
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("tool") => "tool",
        Some(other) => {
            add_note(
                &mut message.metadata,
                format!(
                    "data.role `{other}` is not system, user, assistant or tool: kept as system"
                ),
            );
            "system"
        }
        None => {
            add_note(&mut message.metadata, "no data.role: kept as system");
            "system"
        }
    };
    message.name = string(data.get("name")).filter(|name| !name.is_empty());
    if let Some(calls) = data.get("tool_calls") {
        message.tool_calls = embedded_tool_calls(calls, &mut message.metadata);
    }
    message.content = match data.get("content") {
        // An assistant turn that only calls tools has null content.
        None if !message.tool_calls.is_empty() => None,
        Some(raw) if raw.get() == "null" && !message.tool_calls.is_empty() => None,
        raw => Some(content(raw)),
    };
    if message.role == "tool" {
        message.tool_call_id = Some(call_id(data, &mut message.metadata));
    }
}

/// Adds to `metadata.note` (an event can depart in more than one way).
fn add_note(metadata: &mut Metadata, text: impl Into<String>) {
    let text = text.into();
    metadata.note = Some(match metadata.note.take() {
        Some(before) => format!("{before}; {text}"),
        None => text,
    });
}

fn call_id(data: &Fields, metadata: &mut Metadata) -> String {
    first_string(data, &["call_id", "tool_call_id", "id"]).unwrap_or_else(|| {
        add_note(metadata, "no data.call_id: the event id is used");
        metadata.event_id.clone().unwrap_or_default()
    })
}

/// Tool-call arguments as a string holding JSON: a string is kept as it is,
/// anything else serialised, none is `{}`.
fn arguments(raw: Option<&&RawValue>) -> String {
    raw.and_then(|raw| text_of(raw))
        .unwrap_or_else(|| "{}".into())
}

fn tool_call(data: &Fields, metadata: &mut Metadata) -> ToolCall {
    let id = call_id(data, metadata);
    let name = first_string(data, &["name", "tool"]).unwrap_or_else(|| {
        add_note(metadata, "no data.name: the tool is called `unknown`");
        "unknown".into()
    });
    ToolCall {
        id,
        kind: "function",
        function: Function {
            name,
            arguments: arguments(data.get("arguments").or(data.get("input"))),
        },
    }
}

/// `data.tool_calls` of a message, in OpenAI's own shape or outboxd's flat
/// one (`{call_id, name, arguments}`).
fn embedded_tool_calls(raw: &RawValue, metadata: &mut Metadata) -> Vec<ToolCall> {
    let Ok(calls) = serde_json::from_str::<Vec<&RawValue>>(raw.get()) else {
        add_note(metadata, "data.tool_calls is not an array: left out");
        return Vec::new();
    };
    calls
        .iter()
        .map(|call| {
            let outer = fields(call.get()).unwrap_or_default();
            match outer.get("function").and_then(|f| fields(f.get())) {
                Some(function) => ToolCall {
                    id: call_id(&outer, metadata),
                    kind: "function",
                    function: Function {
                        name: first_string(&function, &["name"])
                            .unwrap_or_else(|| "unknown".into()),
                        arguments: arguments(function.get("arguments")),
                    },
                },
                None => tool_call(&outer, metadata),
            }
        })
        .collect()
}

/// A stored event made from its JSON body, for the format tests.
#[cfg(test)]
pub(crate) fn stored_for_test(seq: i64, body: serde_json::Value) -> StoredEvent {
    StoredEvent {
        seq,
        event_type: body["type"].as_str().unwrap().into(),
        fidelity: crate::event::Fidelity::Committed,
        session_id: body["session_id"].as_str().map(str::to_string),
        received_ms: 0,
        body: serde_json::to_vec(&body).unwrap(),
    }
}

#[cfg(test)]
mod tests {
    use super::stored_for_test as stored;
    use super::*;
    use serde_json::{json, Value};

    fn mapped(body: Value) -> Value {
        serde_json::to_value(map_event(&stored(7, body))).unwrap()
    }

    #[test]
    fn messages_keep_role_name_and_content_untouched() {
        let long = "x".repeat(100_000);
        let record = mapped(
            json!({"id": "e1", "type": "message", "time": "2026-01-01T00:00:00.000Z",
            "agent_id": "planner", "session_id": "s1", "run_id": "r1", "correlation_id": "c1",
            "data": {"role": "user", "content": long, "name": "alice"}}),
        );
        assert_eq!(record["role"], "user");
        assert_eq!(record["name"], "alice");
        assert_eq!(record["content"].as_str().unwrap().len(), 100_000);
        assert_eq!(
            record["metadata"],
            json!({"event_id": "e1", "seq": 7, "type": "message", "time": "2026-01-01T00:00:00.000Z",
                "agent_id": "planner", "session_id": "s1", "run_id": "r1", "correlation_id": "c1"})
        );
        let developer = mapped(
            json!({"type": "message", "data": {"role": "developer", "content": "be brief"}}),
        );
        assert_eq!(
            (developer["role"].as_str(), developer["content"].as_str()),
            (Some("system"), Some("be brief"))
        );
        // Content parts pass through; other JSON becomes its text.
        let parts = json!([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "u"}}]);
        assert_eq!(
            mapped(json!({"type": "message", "data": {"role": "user", "content": parts}}))
                ["content"],
            parts
        );
        assert_eq!(
            mapped(json!({"type": "message", "data": {"role": "assistant", "content": {"a": 1}}}))
                ["content"],
            "{\"a\":1}"
        );
    }

    #[test]
    fn a_message_without_a_known_role_is_a_system_record_that_says_so() {
        for data in [
            json!({"content": "hi"}),
            json!({"role": "robot", "content": "hi"}),
        ] {
            let record = mapped(json!({"type": "message", "data": data}));
            assert_eq!(record["role"], "system");
            assert_eq!(record["content"], "hi");
            assert!(record["metadata"]["note"]
                .as_str()
                .unwrap()
                .contains("role"));
        }
    }

    #[test]
    fn tool_calls_carry_their_arguments_as_a_json_string() {
        let call = mapped(
            json!({"type": "tool.call", "data": {"call_id": "c9", "name": "search",
            "arguments": {"q": "rust", "n": 3}}}),
        );
        assert_eq!(call["role"], "assistant");
        assert_eq!(call["content"], Value::Null);
        let tool_call = &call["tool_calls"][0];
        assert_eq!(
            (tool_call["id"].as_str(), tool_call["type"].as_str()),
            (Some("c9"), Some("function"))
        );
        assert_eq!(tool_call["function"]["name"], "search");
        let arguments: Value =
            serde_json::from_str(tool_call["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(arguments, json!({"q": "rust", "n": 3}));
        // Already a string: kept byte for byte; none: "{}".
        let given = mapped(
            json!({"type": "tool.call", "data": {"call_id": "c1", "name": "f", "arguments": "{\"b\": 2,  \"a\": 1}"}}),
        );
        assert_eq!(
            given["tool_calls"][0]["function"]["arguments"],
            "{\"b\": 2,  \"a\": 1}"
        );
        let none = mapped(json!({"type": "tool.call", "data": {"call_id": "c1", "name": "f"}}));
        assert_eq!(none["tool_calls"][0]["function"]["arguments"], "{}");
        // No call id: the event id, and a note.
        let unnamed = mapped(json!({"id": "e5", "type": "tool.call", "data": {"name": "f"}}));
        assert_eq!(unnamed["tool_calls"][0]["id"], "e5");
        assert!(unnamed["metadata"]["note"].is_string());
    }

    #[test]
    fn tool_results_answer_their_call_and_say_whether_they_failed() {
        let ok = mapped(
            json!({"type": "tool.result", "data": {"call_id": "c9", "name": "search", "content": "3 hits"}}),
        );
        assert_eq!(ok["role"], "tool");
        assert_eq!(ok["tool_call_id"], "c9");
        assert_eq!(ok["content"], "3 hits");
        assert_eq!(ok["metadata"]["tool_name"], "search");
        assert_eq!(ok["metadata"]["is_error"], false);
        let failed = mapped(
            json!({"type": "tool.result", "data": {"call_id": "c9", "content": {"error": "timeout"}, "is_error": true}}),
        );
        assert_eq!(failed["content"], "{\"error\":\"timeout\"}");
        assert_eq!(failed["metadata"]["is_error"], true);
    }

    #[test]
    fn reasoning_lifecycle_and_unknown_types() {
        let reasoning = mapped(json!({"type": "reasoning", "data": {"content": "think first"}}));
        assert_eq!(reasoning["role"], "assistant");
        assert_eq!(reasoning["content"], "");
        assert_eq!(reasoning["reasoning_content"], "think first");
        let started = mapped(json!({"type": "run.started", "data": {"model": "m1"}}));
        assert_eq!(started["role"], "system");
        assert_eq!(started["content"], "run.started: {\"model\":\"m1\"}");
        assert_eq!(
            mapped(json!({"type": "session.ended"}))["content"],
            "session.ended"
        );
    }

    #[test]
    fn openai_shaped_tool_calls_inside_a_message_are_kept() {
        let record = mapped(
            json!({"type": "message", "data": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                           {"call_id": "b", "name": "g", "arguments": {"x": 1}}]}}),
        );
        assert_eq!(record["content"], Value::Null);
        assert_eq!(record["tool_calls"][0]["id"], "a");
        assert_eq!(record["tool_calls"][1]["function"]["name"], "g");
        assert_eq!(
            record["tool_calls"][1]["function"]["arguments"],
            "{\"x\":1}"
        );
        let tool = mapped(
            json!({"type": "message", "data": {"role": "tool", "tool_call_id": "a", "content": "done"}}),
        );
        assert_eq!(tool["tool_call_id"], "a");
    }
}

//! Redaction at ingest, before an event is stored: nothing unredacted
//! reaches the disk, the change feed or a sink.
//!
//! Two kinds of rule, configured under `[redaction]`:
//! - patterns (the built-in secret shapes, on by default, and
//!   `[[redaction.rules]]` with `pattern`): searched in every string value
//!   of the stored envelope but its identity fields (`id`, `type`, `time`,
//!   `fidelity`, `session_id`, `agent_id`, `run_id`, `correlation_id`);
//!   a match becomes `[REDACTED:<rule>]`;
//! - paths (`[[redaction.rules]]` with `path`, a JSON pointer into the
//!   envelope such as `/data/env`): the value there is masked or dropped.
//!
//! Each rule may be scoped to event types (`types`, globs). The built-in
//! rules' gates (cheap literal scans, `gate`) and one regex set over the
//! custom patterns decide whether an event needs a rewrite at all, so
//! events with nothing to hide cost a scan, not a regex per rule.

mod builtin;
mod gate;
mod json;

use crate::event::Event;
use crate::telemetry::names;
use gate::Gates;
use regex::{Regex, RegexSet};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};

/// `[redaction]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// The built-in secret shapes (README lists them).
    pub builtins: bool,
    /// Built-in rules switched off, by name.
    pub disable: Vec<String>,
    pub rules: Vec<RuleConfig>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            builtins: true,
            disable: Vec::new(),
            rules: Vec::new(),
        }
    }
}

/// `[[redaction.rules]]`: a `pattern` or a `path`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// For `path` rules: `mask` (the default) or `drop`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PathRuleAction>,
    /// Event types the rule applies to (globs); empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathRuleAction {
    Mask,
    Drop,
}

/// Top-level envelope fields readers key on: never rewritten.
const IDENTITY: &[&str] = &[
    "/id",
    "/type",
    "/time",
    "/received",
    "/fidelity",
    "/session_id",
    "/agent_id",
    "/run_id",
    "/correlation_id",
];

struct Scope(Vec<glob::Pattern>);

impl Scope {
    fn new(rule: &str, types: &[String]) -> Result<Scope, String> {
        let patterns = types
            .iter()
            .map(|t| {
                glob::Pattern::new(t)
                    .map_err(|e| format!("rule `{rule}`: types: `{t}` is not a glob pattern: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Scope(patterns))
    }

    fn covers(&self, event_type: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(event_type))
    }
}

struct PatternRule {
    name: String,
    regex: Regex,
    /// The capture group to mask instead of the whole match.
    secret: Option<usize>,
    scope: Scope,
    mask: String,
}

struct PathRule {
    name: String,
    pointer: String,
    drop: bool,
    scope: Scope,
    /// The mask as a JSON string literal.
    mask: String,
}

/// The rules ingest applies now; a reload swaps them between requests
/// (a request uses the rules it started with, start to end).
#[derive(Clone, Default)]
pub struct LiveRules(Arc<RwLock<Option<Arc<Redactor>>>>);

impl LiveRules {
    pub fn new(config: &RedactionConfig) -> Result<LiveRules, String> {
        let rules = LiveRules::default();
        rules.set(Redactor::new(config)?);
        Ok(rules)
    }

    pub fn current(&self) -> Option<Arc<Redactor>> {
        self.0.read().expect("rules lock").clone()
    }

    pub fn set(&self, rules: Option<Redactor>) {
        *self.0.write().expect("rules lock") = rules.map(Arc::new);
    }
}

/// The compiled rules.
pub struct Redactor {
    /// The built-in patterns switched on, then the custom ones: the order
    /// they apply in.
    patterns: Vec<PatternRule>,
    /// The gates of `patterns[..builtins]`.
    gates: Gates,
    builtins: usize,
    /// `patterns[builtins..]` as one set (a custom regex has no gate).
    custom: Option<RegexSet>,
    paths: Vec<PathRule>,
}

impl Redactor {
    /// None when no rule is configured (nothing to do per event).
    pub fn new(config: &RedactionConfig) -> Result<Option<Redactor>, String> {
        let builtin_names: Vec<&str> = builtin::names().collect();
        for name in &config.disable {
            if !builtin_names.contains(&name.as_str()) {
                return Err(format!(
                    "disable: `{name}` is not a built-in rule (built-ins: {})",
                    builtin_names.join(", ")
                ));
            }
        }
        let mut patterns = Vec::new();
        let mut gates = Vec::new();
        if config.builtins {
            for (name, pattern, gate) in builtin::RULES {
                if config.disable.iter().any(|d| d == name) {
                    continue;
                }
                let regex = Regex::new(pattern).expect("built-in patterns compile");
                patterns.push(PatternRule::new(name, regex, Scope(Vec::new())));
                gates.push(*gate);
            }
        }
        let builtins = patterns.len();
        let mut paths = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for rule in &config.rules {
            let name = rule.name.as_str();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(format!(
                    "rules: name `{name}` must be 1 or more of A-Z a-z 0-9 _ - (it appears in masks and metrics)"
                ));
            }
            if builtin_names.contains(&name) || seen.contains(&name) {
                return Err(format!(
                    "rules: name `{name}` is taken (by a built-in rule or another rule)"
                ));
            }
            seen.push(name);
            let scope = Scope::new(name, &rule.types)?;
            match (&rule.pattern, &rule.path) {
                (Some(pattern), None) => {
                    if rule.action.is_some() {
                        return Err(format!(
                            "rule `{name}`: `action` applies to `path` rules; a pattern's matches are masked"
                        ));
                    }
                    patterns.push(PatternRule::new(name, compile(name, pattern)?, scope));
                }
                (None, Some(pointer)) => {
                    if !pointer.starts_with('/') {
                        return Err(format!(
                            "rule `{name}`: path `{pointer}` must be a JSON pointer such as \"/data/env\""
                        ));
                    }
                    if IDENTITY.contains(&pointer.as_str()) {
                        return Err(format!(
                            "rule `{name}`: path `{pointer}` is an identity field readers key on; it cannot be redacted"
                        ));
                    }
                    paths.push(PathRule {
                        name: name.to_owned(),
                        pointer: pointer.clone(),
                        drop: rule.action == Some(PathRuleAction::Drop),
                        scope,
                        mask: serde_json::to_string(&mask_for(name)).expect("a string"),
                    });
                }
                _ => {
                    return Err(format!(
                        "rule `{name}`: give exactly one of `pattern` (a regex over string values) or `path` (a JSON pointer)"
                    ))
                }
            }
        }
        if patterns.is_empty() && paths.is_empty() {
            return Ok(None);
        }
        let custom = match patterns.len() > builtins {
            true => Some(
                RegexSet::new(patterns[builtins..].iter().map(|p| p.regex.as_str()))
                    .map_err(|e| format!("rules: {e}"))?,
            ),
            false => None,
        };
        Ok(Some(Redactor {
            patterns,
            gates: Gates::new(&gates),
            builtins,
            custom,
            paths,
        }))
    }

    /// The pattern rules that match somewhere in `view` and cover the
    /// event's type, in the order they apply.
    fn matching(&self, view: &str, event_type: &str) -> Vec<&PatternRule> {
        let mut matching = Vec::new();
        let mut open = self.gates.open(view);
        while open != 0 {
            let rule = &self.patterns[open.trailing_zeros() as usize];
            open &= open - 1;
            if rule.scope.covers(event_type) && rule.regex.is_match(view) {
                matching.push(rule);
            }
        }
        // Most events hold no secret, and one forward scan says so; which
        // rules matched (an overlapping scan, several times slower) only
        // when one did.
        if let Some(set) = self.custom.as_ref().filter(|set| set.is_match(view)) {
            let custom = &self.patterns[self.builtins..];
            matching.extend(
                set.matches(view)
                    .iter()
                    .map(|i| &custom[i])
                    .filter(|p| p.scope.covers(event_type)),
            );
        }
        matching
    }

    /// Rewrites `event.body` in place when a rule applies; counts each
    /// redaction by rule.
    pub fn apply(&self, event: &mut Event) {
        let view = json::decoded_view(&event.body);
        let patterns = self.matching(&view, &event.event_type);
        let paths: Vec<&PathRule> = self
            .paths
            .iter()
            .filter(|p| p.scope.covers(&event.event_type))
            .collect();
        if patterns.is_empty() && paths.is_empty() {
            return;
        }
        let mut visitor = Visitor { patterns, paths };
        if let Some(body) = json::rewrite(&event.body, &mut visitor) {
            event.body = body;
        }
    }
}

impl PatternRule {
    fn new(name: &str, regex: Regex, scope: Scope) -> PatternRule {
        let secret = regex
            .capture_names()
            .position(|group| group == Some("secret"));
        PatternRule {
            name: name.to_owned(),
            regex,
            secret,
            scope,
            mask: mask_for(name),
        }
    }

    /// The value with this rule's matches masked, or None.
    fn redact(&self, value: &str) -> Option<String> {
        let mut out = String::new();
        let mut copied = 0;
        let mut count = 0u64;
        for captures in self.regex.captures_iter(value) {
            let span = match self.secret {
                Some(group) => captures.get(group),
                None => captures.get(0),
            };
            let Some(span) = span else { continue };
            // What an earlier rule masked is not a secret any more.
            if span.as_str().starts_with(MASK_PREFIX) || span.is_empty() {
                continue;
            }
            out.push_str(&value[copied..span.start()]);
            out.push_str(&self.mask);
            copied = span.end();
            count += 1;
        }
        if count == 0 {
            return None;
        }
        out.push_str(&value[copied..]);
        metrics::counter!(names::INGEST_REDACTIONS, "rule" => self.name.clone()).increment(count);
        Some(out)
    }
}

const MASK_PREFIX: &str = "[REDACTED:";

fn mask_for(rule: &str) -> String {
    format!("{MASK_PREFIX}{rule}]")
}

/// A custom pattern: compiled, and refused when anchored, since it is
/// searched anywhere in a value (and checked against the whole body first).
fn compile(name: &str, pattern: &str) -> Result<Regex, String> {
    let hir = regex_syntax::Parser::new()
        .parse(pattern)
        .map_err(|e| format!("rule `{name}`: pattern is not a valid regex: {e}"))?;
    let anchored = hir.properties().look_set().iter().any(|look| {
        use regex_syntax::hir::Look;
        matches!(
            look,
            Look::Start | Look::End | Look::StartLF | Look::EndLF | Look::StartCRLF | Look::EndCRLF
        )
    });
    if anchored {
        return Err(format!(
            "rule `{name}`: pattern `{pattern}` uses ^, $ or another anchor; patterns are searched anywhere in a string value, leave anchors out"
        ));
    }
    Regex::new(pattern).map_err(|e| format!("rule `{name}`: pattern is not a valid regex: {e}"))
}

struct Visitor<'a> {
    patterns: Vec<&'a PatternRule>,
    paths: Vec<&'a PathRule>,
}

impl json::Visitor for Visitor<'_> {
    fn at_path(&mut self, pointer: &str) -> json::PathAction {
        match self.paths.iter().find(|p| p.pointer == pointer) {
            Some(rule) => {
                metrics::counter!(names::INGEST_REDACTIONS, "rule" => rule.name.clone())
                    .increment(1);
                match rule.drop {
                    true => json::PathAction::Drop,
                    false => json::PathAction::Mask(rule.mask.clone()),
                }
            }
            None => json::PathAction::Keep,
        }
    }

    fn string(&mut self, pointer: &str, value: &str) -> Option<String> {
        if IDENTITY.contains(&pointer) {
            return None;
        }
        let mut current: Option<String> = None;
        for rule in &self.patterns {
            if let Some(next) = rule.redact(current.as_deref().unwrap_or(value)) {
                current = Some(next);
            }
        }
        current
    }
}

#[cfg(test)]
mod tests;

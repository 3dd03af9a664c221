//! Cheap necessary conditions for the built-in rules, checked before any
//! regex runs: a rule's regex only searches a body its gate lets through.
//!
//! One regex set over every body cost 14% of batched ingest: a set gets no
//! literal prefilter, and `secret_assignment` (case-insensitive words after
//! any name) gets none even alone, so both ran a DFA over every byte
//! (~0.7 GB/s). A gate is a literal search (one packed multi-literal scan
//! for all rules) or, for assignments, a look behind each `=` and `:`.
//!
//! A gate must pass on every text its rule matches (`tests` checks each
//! rule's examples, case variants and Unicode case folds); passing on text
//! the rule does not match only costs the regex run.

use aho_corasick::{AhoCorasick, Input, MatchKind};

/// What a rule's every match contains.
#[derive(Debug, Clone, Copy)]
pub enum Gate {
    /// One of these literals, as written.
    Literal(&'static [&'static str]),
    /// This literal in any ASCII case. Only for letters without a non-ASCII
    /// case variant (not `k`, which Kelvin's `K` folds to, nor `s`, which
    /// the long `ſ` folds to): a Unicode case-insensitive rule matches those.
    AnyCase(&'static str),
    /// A `=` or `:` after one of these words (any case, lowercase here),
    /// with whitespace and one quote allowed between: `NAME_TOKEN = x`,
    /// `"password": "x"`.
    Assignment(&'static [&'static str]),
}

/// The gates of up to 64 rules, compiled: which rules may match a text.
pub struct Gates {
    literals: AhoCorasick,
    /// The rule each literal of `literals` stands for.
    literal_rule: Vec<usize>,
    assignments: Vec<(usize, &'static [&'static str])>,
    /// The bytes an assignment word can end in: most names end in another,
    /// and are passed over without a word compared.
    word_ends: [bool; 256],
}

impl Gates {
    /// `gates[i]` is rule `i`'s gate.
    pub fn new(gates: &[Gate]) -> Gates {
        assert!(gates.len() <= 64, "a rule set is a u64");
        let mut literals = Vec::new();
        let mut literal_rule = Vec::new();
        let mut assignments = Vec::new();
        for (rule, gate) in gates.iter().enumerate() {
            match *gate {
                Gate::Literal(words) => {
                    for word in words {
                        literals.push(word.to_string());
                        literal_rule.push(rule);
                    }
                }
                Gate::AnyCase(word) => {
                    for variant in case_variants(word) {
                        literals.push(variant);
                        literal_rule.push(rule);
                    }
                }
                Gate::Assignment(words) => assignments.push((rule, words)),
            }
        }
        // Leftmost-first: the kind the packed (SIMD) searcher serves; the
        // scan restarts one byte after each hit, so no literal is hidden
        // behind another.
        let literals = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(&literals)
            .expect("gate literals compile");
        let mut word_ends = [false; 256];
        for word in assignments.iter().flat_map(|(_, words)| words.iter()) {
            let last = *word.as_bytes().last().expect("a word");
            word_ends[last.to_ascii_lowercase() as usize] = true;
            word_ends[last.to_ascii_uppercase() as usize] = true;
        }
        // The last UTF-8 bytes of the two non-ASCII folds `ends_with_word` knows.
        for fold in ['\u{212A}', '\u{017F}'] {
            let mut utf8 = [0; 4];
            let last = *fold
                .encode_utf8(&mut utf8)
                .as_bytes()
                .last()
                .expect("a byte");
            word_ends[last as usize] = true;
        }
        Gates {
            literals,
            literal_rule,
            assignments,
            word_ends,
        }
    }

    /// The rules whose gate passes on `text`, as bits.
    pub fn open(&self, text: &str) -> u64 {
        let mut open = 0u64;
        let mut at = 0;
        while let Some(hit) = self.literals.find(Input::new(text).range(at..)) {
            open |= 1 << self.literal_rule[hit.pattern().as_usize()];
            at = hit.start() + 1;
        }
        if !self.assignments.is_empty() {
            open |= self.assignments_open(text);
        }
        open
    }

    /// The assignment-gated rules that open on `text`: one scan for all.
    fn assignments_open(&self, text: &str) -> u64 {
        let all = self
            .assignments
            .iter()
            .fold(0u64, |all, (rule, _)| all | 1 << rule);
        let mut open = 0u64;
        for at in memchr::memchr2_iter(b'=', b':', text.as_bytes()) {
            let name = name_before(text, at);
            if !name
                .as_bytes()
                .last()
                .is_some_and(|last| self.word_ends[*last as usize])
            {
                continue;
            }
            for (rule, words) in &self.assignments {
                if words.iter().any(|word| ends_with_word(name, word)) {
                    open |= 1 << rule;
                }
            }
            if open == all {
                break;
            }
        }
        open
    }
}

/// Every ASCII upper/lower spelling of `word`.
fn case_variants(word: &str) -> Vec<String> {
    let mut variants = vec![String::new()];
    for c in word.chars() {
        assert!(
            c.is_ascii_alphanumeric() && !matches!(c.to_ascii_lowercase(), 'k' | 's'),
            "`{c}` has a non-ASCII case variant: gate on other letters"
        );
        let cases = [c.to_ascii_lowercase(), c.to_ascii_uppercase()];
        let cases = if cases[0] == cases[1] {
            &cases[..1]
        } else {
            &cases[..]
        };
        variants = variants
            .iter()
            .flat_map(|v| cases.iter().map(move |c| format!("{v}{c}")))
            .collect();
    }
    variants
}

/// The text before the `=` or `:` at `at` without the whitespace and the
/// one quote `word["']?\s*[=:]` allows between.
fn name_before(text: &str, at: usize) -> &str {
    // `trim_end` drops Unicode White_Space, what `\s` matches.
    let before = text[..at].trim_end();
    before.strip_suffix(['"', '\'']).unwrap_or(before)
}

/// Whether `text` ends with `word` (ASCII lowercase) under Unicode simple
/// case folding, as a `(?i)` regex compares.
fn ends_with_word(text: &str, word: &str) -> bool {
    if let Some(tail) = text.as_bytes().get(text.len().saturating_sub(word.len())..) {
        if tail.len() == word.len() && tail.is_ascii() {
            return tail.eq_ignore_ascii_case(word.as_bytes());
        }
    }
    let mut chars = text.chars().rev();
    word.chars().rev().all(|want| {
        chars.next().is_some_and(|c| {
            let folded = match c {
                '\u{212A}' => 'k', // KELVIN SIGN
                '\u{017F}' => 's', // LATIN SMALL LETTER LONG S
                c => c.to_ascii_lowercase(),
            };
            folded == want
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_case_spells_every_variant() {
        let mut variants = case_variants("ab1");
        variants.sort();
        assert_eq!(variants, ["AB1", "Ab1", "aB1", "ab1"]);
    }

    #[test]
    fn assignments_are_found_behind_whitespace_and_a_quote() {
        let gates = Gates::new(&[Gate::Assignment(&["token", "key"])]);
        for yes in [
            "GITHUB_TOKEN=x",
            "api_key = x",
            "\"Token\" : \"x\"",
            "'KEY':x",
            "a_\u{212A}EY=x",
            "token\u{2003}= x",
        ] {
            assert_eq!(gates.open(yes), 1, "{yes}");
        }
        for no in [
            "max_tokens=1",
            "token x = y",
            "monkey business",
            "\"key\"\"=x",
            "keys: 1",
            "",
        ] {
            assert_eq!(gates.open(no), 0, "{no}");
        }
    }

    #[test]
    fn every_literal_is_found_even_inside_another_hit() {
        let gates = Gates::new(&[
            Gate::Literal(&["ACCA"]),
            Gate::Literal(&["AKIA"]),
            Gate::AnyCase("arer"),
            Gate::Assignment(&["pwd"]),
        ]);
        assert_eq!(gates.open("ACCAKIA"), 0b0011);
        assert_eq!(gates.open("x BeArEr y"), 0b0100);
        assert_eq!(gates.open("PWD: x ACCA"), 0b1001);
        assert_eq!(gates.open("nothing here: at all"), 0);
    }
}

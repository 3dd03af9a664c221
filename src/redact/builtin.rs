//! The built-in secret shapes: on by default, each switched off by name
//! (`redaction.disable`). A pattern with a group named `secret` masks only
//! that group, so the context stays readable (`password=[REDACTED:...]`,
//! `https://user:[REDACTED:url_credentials]@host`).
//!
//! They lean towards masking: a false positive costs a few characters of a
//! log line, a miss leaks a credential to every sink.

use super::gate::Gate;

/// `(name, pattern, gate)`, applied in this order: the first rule to claim
/// a span names it in the mask. Word boundaries are ASCII (`(?-u:\b)`): the
/// fast engines cannot do Unicode ones on text that is not ASCII. The gate
/// names what every match contains (see `gate`).
pub const RULES: &[(&str, &str, Gate)] = &[
    (
        "private_key",
        r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----",
        Gate::Literal(&["-----BEGIN "]),
    ),
    // The same PEM block base64-encoded, as kubeconfig's client-key-data
    // holds it ("-----BEGIN RSA / EC / OPENSSH / (nothing) PRIVATE KEY").
    (
        "private_key_base64",
        r"LS0tLS1CRUdJTiB(?:SU0EgUFJJVkFURSBLRVkt|QUklWQVRFIEtFWS0t|FQyBQUklWQVRFIEtFWS0t|PUEVOU1NIIFBSSVZBVEUgS0VZLS0t)[A-Za-z0-9+/=]*",
        Gate::Literal(&["LS0tLS1CRUdJTiB"]),
    ),
    (
        "aws_access_key_id",
        r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?-u:\b)",
        Gate::Literal(&["AKIA", "ASIA", "ABIA", "ACCA"]),
    ),
    (
        "aws_secret_key",
        r#"(?i)aws_?secret_?access_?key["']?\s*[=:]\s*["']?(?P<secret>[A-Za-z0-9/+=]{40})"#,
        Gate::Assignment(&["key"]),
    ),
    (
        "jwt",
        r"(?-u:\b)eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
        Gate::Literal(&["eyJ"]),
    ),
    (
        "bearer_token",
        r"(?i:(?-u:\b)bearer)\s+(?P<secret>[A-Za-z0-9._~+/-]{16,}=*)",
        Gate::AnyCase("rer"),
    ),
    (
        "basic_auth",
        r"(?i:authorization:\s*basic)\s+(?P<secret>[A-Za-z0-9+/]{8,}=*)",
        Gate::Assignment(&["authorization"]),
    ),
    (
        "github_token",
        r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})",
        Gate::Literal(&["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"]),
    ),
    (
        "slack_token",
        r"(?-u:\b)xox[abposr]-[A-Za-z0-9-]{10,}",
        Gate::Literal(&["xox"]),
    ),
    (
        "google_api_key",
        r"(?-u:\b)AIza[0-9A-Za-z_-]{35}",
        Gate::Literal(&["AIza"]),
    ),
    (
        "stripe_key",
        r"(?-u:\b)[sr]k_(?:live|test)_[A-Za-z0-9]{16,}",
        Gate::Literal(&["k_live_", "k_test_"]),
    ),
    // OpenAI (sk-, sk-proj-), Anthropic (sk-ant-) and the many services
    // that copied the prefix.
    (
        "api_key",
        r"(?-u:\b)sk-[A-Za-z0-9_-]{20,}",
        Gate::Literal(&["sk-"]),
    ),
    (
        "url_credentials",
        r#"(?-u:\b)[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@"'<>]+:(?P<secret>[^\s@/"'<>]+)@"#,
        Gate::Literal(&["://"]),
    ),
    // NAME=value and name: value where the name ends in a secret-like word
    // (.env files, `env` dumps, YAML, query strings). The word must end the
    // name: MAX_TOKENS=4096 and TOKEN_LIMIT=10 stay.
    (
        "secret_assignment",
        r#"(?i)(?-u:\b)[a-z0-9_.-]*(?:password|passwd|pwd|secret|secret_key|token|api_?key|access_?key|private_?key|credentials?)["']?\s*[=:]\s*["']?(?P<secret>[^\s"',;&]{8,})"#,
        Gate::Assignment(&[
            "password",
            "passwd",
            "pwd",
            "secret",
            "key",
            "token",
            "credential",
            "credentials",
        ]),
    ),
];

pub fn names() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|(name, _, _)| *name)
}

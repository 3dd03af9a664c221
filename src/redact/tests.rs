//! Realistic tool outputs: every secret is masked, nothing else changes.
//! Each case is written once with `{secret:rule}` placeholders: the input
//! gets the secret, the expectation gets the rule's mask.

use super::*;
use crate::event::{Event, Fidelity};
use gate::Gates;

fn event(event_type: &str, data: &serde_json::Value) -> Event {
    Event {
        id: "ev-1".into(),
        client_id: true,
        event_type: event_type.into(),
        session_id: Some("s-1".into()),
        fidelity: Fidelity::Committed,
        received_ms: 0,
        body: format!(
            r#"{{"id":"ev-1","type":"{event_type}","time":"2026-11-23T10:00:00Z","session_id":"s-1","fidelity":"committed","data":{data}}}"#
        ),
    }
}

/// (input, expected) from a template with `{{secret|rule}}` placeholders.
fn split(template: &str) -> (String, String) {
    let (mut input, mut expected) = (String::new(), String::new());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let end = rest[start..].find("}}").expect("closed placeholder") + start;
        let (secret, rule) = rest[start + 2..end].split_once('|').expect("secret|rule");
        input.push_str(&rest[..start]);
        expected.push_str(&rest[..start]);
        input.push_str(secret);
        expected.push_str(&format!("[REDACTED:{rule}]"));
        rest = &rest[end + 2..];
    }
    input.push_str(rest);
    expected.push_str(rest);
    (input, expected)
}

fn redact_output(redactor: &Redactor, template: &str) {
    let (input, expected) = split(template);
    let mut ev = event(
        "tool.result",
        &serde_json::json!({"tool": "shell", "output": input}),
    );
    redactor.apply(&mut ev);
    let want = event(
        "tool.result",
        &serde_json::json!({"tool": "shell", "output": expected}),
    );
    let got: serde_json::Value = serde_json::from_str(&ev.body).unwrap();
    assert_eq!(
        got["data"]["output"].as_str().unwrap(),
        want_output(&want),
        "in:\n{input}"
    );
    assert_eq!(ev.body, want.body, "nothing else in the envelope changes");
}

fn want_output(event: &Event) -> String {
    let v: serde_json::Value = serde_json::from_str(&event.body).unwrap();
    v["data"]["output"].as_str().unwrap().to_owned()
}

fn defaults() -> Redactor {
    Redactor::new(&RedactionConfig::default()).unwrap().unwrap()
}

#[test]
fn a_shell_env_dump() {
    redact_output(
        &defaults(),
        "HOME=/home/agent\nPATH=/usr/local/bin:/usr/bin:/bin\nLANG=C.UTF-8\nMAX_TOKENS=4096\nTOKEN_LIMIT=100000\n\
         AWS_ACCESS_KEY_ID={{AKIAIOSFODNN7EXAMPLE|aws_access_key_id}}\n\
         AWS_SECRET_ACCESS_KEY={{wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY|aws_secret_key}}\n\
         OPENAI_API_KEY={{sk-proj-4fQz9XbT2mLw8RkVn3Jd7HsYc1PaGe6U|api_key}}\n\
         GITHUB_TOKEN={{ghp_16C7e42F292c6912E7710c838347Ae178B4a|github_token}}\n\
         SLACK_BOT_TOKEN={{xoxb-2048-81920-Zq8dLmR4tYw2|slack_token}}\n\
         DATABASE_URL=postgres://app:{{Sup3r-s3cret|url_credentials}}@db.internal:5432/agents\n\
         DB_PASSWORD={{hunter2hunter2|secret_assignment}}\n\
         SHLVL=1\nPWDX=/tmp\nEDITOR=vim\n",
    );
}

#[test]
fn a_dotenv_file_read_by_a_tool() {
    redact_output(
        &defaults(),
        "# app settings\nAPP_ENV=production\nPORT=8080\nLOG_LEVEL=info\n\
         STRIPE_SECRET_KEY={{sk_live_51HxQv2CjZk8Lw3Ty7Pq|stripe_key}}\n\
         GOOGLE_MAPS_KEY={{AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY|google_api_key}}\n\
         SESSION_SECRET=\"{{c0ffee-and-b4gels-forever|secret_assignment}}\"\n\
         ANTHROPIC_API_KEY={{sk-ant-api03-Xy7rT2pQ9wL4mN8vB1cZ6dF3gH5jK0s|api_key}}\n\
         FEATURE_FLAGS=search,chat\n",
    );
}

#[test]
fn a_curl_verbose_transcript() {
    redact_output(
        &defaults(),
        "*   Trying 10.0.0.12:443...\n* Connected to api.example.com (10.0.0.12) port 443\n\
         > POST /v1/orders HTTP/1.1\n> Host: api.example.com\n> User-Agent: curl/8.5.0\n> Accept: */*\n\
         > Authorization: Bearer {{eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC03In0.c2lnbmF0dXJlLWJ5dGVz|jwt}}\n\
         > X-Upstream: Authorization: Basic {{YWdlbnQ6cGFzc3dvcmQxMjM=|basic_auth}}\n\
         > Content-Type: application/json\n> Content-Length: 27\n>\n\
         < HTTP/1.1 201 Created\n< Content-Type: application/json\n< X-Request-Id: 7f3c2a9e-41b7-4c55-9e0d-2b8f6a1c4d3e\n<\n\
         {\"order\":\"o-991\",\"status\":\"created\"}\n\
         * Proxy: http://proxyuser:{{pr0xy-pa55|url_credentials}}@proxy.corp:3128\n\
         > Authorization: Bearer {{3f9a7c2e1b8d4f6a0c5e9b7d2a4f8c1e|bearer_token}}\n",
    );
}

#[test]
fn a_kubeconfig() {
    redact_output(
        &defaults(),
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUM=\n    server: https://10.96.0.1:6443\n  name: prod\n\
         users:\n- name: agent\n  user:\n    client-key-data: {{LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQpNSUlFb3dJQkFBS0NBUUVB|private_key_base64}}\n\
         - name: ci\n  user:\n    token: {{eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJpc3MiOiJrdWJlcm5ldGVzIn0.ZmFrZS1zaWduYXR1cmU|jwt}}\n\
         contexts:\n- context:\n    cluster: prod\n    user: agent\n  name: prod\ncurrent-context: prod\n",
    );
}

#[test]
fn a_private_key_file() {
    redact_output(
        &defaults(),
        "$ cat ~/.ssh/id_ed25519\n{{-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\nQyNTUxOQAAACDx0fake0key0material0only0for0tests0AAAA\n-----END OPENSSH PRIVATE KEY-----|private_key}}\n$ echo done\ndone\n",
    );
}

#[test]
fn prose_and_ids_stay() {
    let redactor = defaults();
    let text = "The bearer of this note asked for a token budget of 4096 tokens. \
                See https://docs.example.com/auth and skip-list entries sk-1; id 7f3c2a9e-41b7-4c55-9e0d-2b8f6a1c4d3e.";
    let mut ev = event(
        "message.created",
        &serde_json::json!({"text": text, "n": 1.5, "ok": true}),
    );
    let before = ev.body.clone();
    redactor.apply(&mut ev);
    assert_eq!(ev.body, before);
}

#[test]
fn identity_fields_are_never_rewritten() {
    let redactor = defaults();
    let mut ev = event(
        "tool.result",
        &serde_json::json!({"k": "AKIAIOSFODNN7EXAMPLE"}),
    );
    ev.body = ev.body.replace("\"s-1\"", "\"AKIAIOSFODNN7EXAMPLE\"");
    redactor.apply(&mut ev);
    assert!(
        ev.body.contains(r#""session_id":"AKIAIOSFODNN7EXAMPLE""#),
        "{}",
        ev.body
    );
    assert!(
        ev.body.contains(r#""k":"[REDACTED:aws_access_key_id]""#),
        "{}",
        ev.body
    );
}

#[test]
fn rules_by_path_pattern_type_and_switches() {
    let config: RedactionConfig = toml::from_str(
        r#"
        disable = ["jwt"]
        [[rules]]
        name = "env"
        path = "/data/env"
        action = "drop"
        [[rules]]
        name = "customer-email"
        pattern = '[a-z0-9.]+@customer\.example'
        types = ["tool.*"]
        [[rules]]
        name = "cookie"
        path = "/data/headers/1"
        "#,
    )
    .unwrap();
    let redactor = Redactor::new(&config).unwrap().unwrap();
    let data = serde_json::json!({
        "env": {"A": "1"},
        "to": "jane.doe@customer.example",
        "headers": ["accept: */*", "cookie: a=b"],
        "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC03In0.c2lnbmF0dXJlLWJ5dGVz",
    });
    let mut tool = event("tool.result", &data);
    redactor.apply(&mut tool);
    let got: serde_json::Value = serde_json::from_str(&tool.body).unwrap();
    assert_eq!(
        got["data"],
        serde_json::json!({
            "to": "[REDACTED:customer-email]",
            "headers": ["accept: */*", "[REDACTED:cookie]"],
            "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZ2VudC03In0.c2lnbmF0dXJlLWJ5dGVz",
        })
    );
    let mut message = event("message.created", &data);
    redactor.apply(&mut message);
    let got: serde_json::Value = serde_json::from_str(&message.body).unwrap();
    assert_eq!(
        got["data"]["to"], "jane.doe@customer.example",
        "out of the rule's types"
    );
}

#[test]
fn nothing_configured_means_no_redactor() {
    let off = RedactionConfig {
        builtins: false,
        ..RedactionConfig::default()
    };
    assert!(Redactor::new(&off).unwrap().is_none());
}

#[test]
fn bad_rules_are_refused_with_the_reason() {
    let cases = [
        (r#"disable = ["nope"]"#, "`nope` is not a built-in rule"),
        (
            r#"[[rules]]
            name = "x"
            pattern = "^abc""#,
            "anchor",
        ),
        (
            r#"[[rules]]
            name = "x"
            pattern = "(unclosed""#,
            "not a valid regex",
        ),
        (
            r#"[[rules]]
            name = "x"
            path = "data/env""#,
            "must be a JSON pointer",
        ),
        (
            r#"[[rules]]
            name = "x"
            path = "/session_id""#,
            "identity field",
        ),
        (
            r#"[[rules]]
            name = "x"
            pattern = "a"
            path = "/data""#,
            "exactly one of",
        ),
        (
            r#"[[rules]]
            name = "jwt"
            pattern = "a""#,
            "is taken",
        ),
        (
            r#"[[rules]]
            name = "has space"
            pattern = "a""#,
            "must be 1 or more",
        ),
        (
            r#"[[rules]]
            name = "x"
            pattern = "a"
            action = "drop""#,
            "`action` applies to `path` rules",
        ),
        (
            r#"[[rules]]
            name = "x"
            pattern = "a"
            types = ["[z"]"#,
            "not a glob",
        ),
    ];
    for (text, want) in cases {
        let config: RedactionConfig = toml::from_str(text).unwrap();
        let error = Redactor::new(&config)
            .err()
            .unwrap_or_else(|| panic!("{text} accepted"));
        assert!(error.contains(want), "{text}: {error}");
    }
}

#[test]
fn secrets_next_to_non_ascii_text() {
    redact_output(
        &defaults(),
        "Schlüssel → {{AKIAIOSFODNN7EXAMPLE|aws_access_key_id}} ✓\nトークン: Bearer {{3f9a7c2e1b8d4f6a0c5e9b7d2a4f8c1e|bearer_token}} 🎉\n",
    );
}

/// A gate that stays shut on text its rule matches lets that secret through
/// unmasked. Each rule's examples, mutated (ASCII case flips, the Unicode
/// folds `K` and `ſ`, other whitespace, text around), must open the gate of
/// every rule whose regex matches them.
#[test]
fn each_gate_opens_wherever_its_rule_matches() {
    let examples = [
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
        "client-key-data: LS0tLS1CRUdJTiBSU0EgUFJJVkFURSBLRVktLS0tLQo=",
        "id AKIAIOSFODNN7EXAMPLE and ASIAIOSFODNN7EXAMPLE",
        "aws_secret_access_key = \"wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\"",
        "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
        "Authorization: Bearer 3f9a7c2e1b8d4f6a0c5e9b7d2a4f8c1e",
        "authorization: basic dXNlcjpwYXNzd29yZA==",
        "ghp_16C7e42F292c6912E7710c838347Ae178B4a github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
        "xoxb-2048-81920-Zq8dLmR4tYw2",
        "key=AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY",
        "sk_live_4eC39HqLyjWDarjtT1zdp7dc rk_test_4eC39HqLyjWDarjtT1zdp7dc",
        "OPENAI_API_KEY sk-proj-4fQz9XbT2mLw8RkVn3Jd7HsYc1PaGe6U",
        "postgres://app:Sup3r-s3cret@db.internal:5432/agents",
        "DB_PASSWORD=hunter2hunter2 'secret': 'abcdefgh1' access_key : x1y2z3w4v5 credentials=\"a1b2c3d4e5\" pwd:longenough",
    ];
    let rules: Vec<(&str, Regex)> = builtin::RULES
        .iter()
        .map(|(name, pattern, _)| (*name, Regex::new(pattern).unwrap()))
        .collect();
    let gates = Gates::new(&builtin::RULES.iter().map(|r| r.2).collect::<Vec<_>>());
    let mut matched = vec![0usize; rules.len()];
    let mut check = |text: &str| {
        let open = gates.open(text);
        for (i, (name, regex)) in rules.iter().enumerate() {
            if regex.is_match(text) {
                matched[i] += 1;
                assert!(
                    open & (1 << i) != 0,
                    "the gate of `{name}` stayed shut on {text:?}"
                );
            }
        }
    };
    let around = ["", " ", "\"", "x", "é ", "\n", "=", ": ", "'"];
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    for example in examples {
        check(example);
        for _ in 0..400 {
            let mut text = String::from(around[next(around.len())]);
            for c in example.chars() {
                let mutated = match (next(6), c) {
                    (0, 'k' | 'K') => '\u{212A}',
                    (0, 's' | 'S') => '\u{017F}',
                    (0, ' ') => '\u{2003}',
                    (1, ' ') => '\t',
                    (1 | 2, c) => c.to_ascii_uppercase(),
                    (3, c) => c.to_ascii_lowercase(),
                    (_, c) => c,
                };
                text.push(mutated);
            }
            text.push_str(around[next(around.len())]);
            check(&text);
        }
    }
    for (i, (name, _)) in rules.iter().enumerate() {
        assert!(matched[i] > 0, "no example matches `{name}`");
    }
}

#[test]
fn ordinary_events_open_no_gate() {
    let gates = Gates::new(&builtin::RULES.iter().map(|r| r.2).collect::<Vec<_>>());
    let body = r#"{"id":"e-1","type":"tool.result","session_id":"s-1","data":{"name":"read_file","usage":{"max_tokens":4096,"prompt_tokens":12},"content":"they said: keep a token count; step 7 passed\n"}}"#;
    assert_eq!(gates.open(body), 0);
}

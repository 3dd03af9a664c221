//! The shipped Prometheus alert rules: valid (`promtool check rules`), firing
//! as their unit tests say (`promtool test rules`), and naming only metrics
//! outboxd exports.

use std::process::Command;

const RULES: &str = "deploy/prometheus/outboxd-alerts.yml";
const RULE_TESTS: &str = "deploy/prometheus/outboxd-alerts.test.yml";

fn promtool(args: &[&str]) -> Option<std::process::Output> {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match output {
        Ok(output) => Some(output),
        Err(_) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing (tests/run.sh installs it)"
            );
            eprintln!("SKIPPED: promtool is not installed");
            None
        }
    }
}

#[test]
fn the_alert_rules_are_valid_and_fire_as_their_tests_say() {
    for args in [["check", "rules", RULES], ["test", "rules", RULE_TESTS]] {
        let Some(output) = promtool(&args) else {
            return;
        };
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_alert_rules_name_only_metrics_outboxd_exports() {
    let root = env!("CARGO_MANIFEST_DIR");
    let rules = std::fs::read_to_string(format!("{root}/{RULES}")).unwrap();
    let telemetry = std::fs::read_to_string(format!("{root}/src/telemetry.rs")).unwrap();
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("outboxd_") {
            named += 1;
            assert!(
                telemetry.contains(&format!("\"{word}\"")),
                "{RULES} names {word}, which src/telemetry.rs does not export"
            );
        }
    }
    assert!(named >= 8, "the rules use outboxd's metrics");
}

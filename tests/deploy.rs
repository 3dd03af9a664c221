//! The deploy examples are what they claim: the Dockerfile builds in stages,
//! runs as a user and checks its health through the binary; the compose and
//! Kubernetes manifests parse and wire together (config, secret, volumes,
//! probes), and the configs they ship pass `check-config`; the Prometheus
//! config passes `promtool`; the Grafana dashboard names only metrics
//! outboxd exports. No Docker engine or cluster runs here: this checks the
//! files, `outboxd health` is run for real.

mod common;

use common::{check_config, Daemon};
use std::path::Path;
use std::process::Command;
use yaml_rust2::{Yaml, YamlLoader};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_documents(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn text<'a>(yaml: &'a Yaml, path: &str) -> &'a str {
    let mut node = yaml;
    for key in path.split('.') {
        node = match key.parse::<usize>() {
            Ok(i) => &node[i],
            Err(_) => &node[key],
        };
    }
    node.as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {node:?}"))
}

fn assert_config_passes(what: &str, toml: &str, env: &[(&str, &str)]) {
    let (ok, _, stderr) = check_config(toml, env);
    assert!(ok, "{what}: check-config refused it: {stderr}");
}

#[test]
fn the_dockerfile_builds_in_stages_runs_as_a_user_and_checks_its_health() {
    let dockerfile = read("Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let stages: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].starts_with("FROM "))
        .collect();
    assert!(stages.len() >= 2, "a build stage and a slim runtime stage");
    let runtime = &lines[*stages.last().unwrap()..];
    assert!(
        runtime
            .iter()
            .any(|l| l.starts_with("USER ") && !l.contains("root")),
        "the runtime stage runs as a non-root user"
    );
    let healthcheck = runtime
        .iter()
        .position(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let command = runtime[healthcheck..=healthcheck + 1].join(" ");
    assert!(command.contains("outboxd\", \"health\""), "{command}");
    assert!(runtime
        .iter()
        .any(|l| l.starts_with("VOLUME") && l.contains("/var/lib/outboxd")));
    for line in &lines {
        let upper = line.to_uppercase();
        if upper.starts_with("ENV") || upper.starts_with("ARG") || upper.contains("OUTBOXD_") {
            for word in ["TOKEN", "SECRET", "PASSWORD", "ACCESS_KEY"] {
                assert!(!upper.contains(word), "a secret in the image: {line}");
            }
        }
    }
    // The config it copies passes check-config with the image's environment.
    assert!(dockerfile.contains("COPY config/outboxd.toml /etc/outboxd/outboxd.toml"));
    let env_block: String = dockerfile
        .split("ENV ")
        .nth(1)
        .expect("an ENV block")
        .lines()
        .take_while(|l| l.trim_end().ends_with('\\') || l.contains('='))
        .collect::<Vec<_>>()
        .join(" ");
    let env: Vec<(&str, &str)> = env_block
        .split_whitespace()
        .filter_map(|pair| pair.split_once('='))
        .collect();
    assert!(env.len() >= 4, "{env:?}");
    assert_config_passes(
        "config/outboxd.toml in the image",
        &read("config/outboxd.toml"),
        &env,
    );
}

#[test]
fn the_compose_example_wires_outboxd_minio_prometheus_and_an_agent() {
    let compose = &yaml_documents("deploy/compose/docker-compose.yml")[0];
    let services = &compose["services"];
    for name in ["outboxd", "minio", "prometheus", "agent"] {
        assert!(!services[name].is_badvalue(), "service {name}");
    }
    let outboxd = &services["outboxd"];
    let volumes: Vec<&str> = outboxd["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(volumes.contains(&"./outboxd.toml:/etc/outboxd/outboxd.toml:ro"));
    assert!(volumes.contains(&"socket:/run/outboxd"));
    let agent_volumes = format!("{:?}", services["agent"]["volumes"]);
    assert!(
        agent_volumes.contains("socket:/run/outboxd"),
        "the agent shares the socket"
    );
    assert!(format!("{:?}", outboxd["healthcheck"]["test"]).contains("health"));
    // Published ports stay on the host's loopback.
    for service in ["minio", "prometheus"] {
        for port in services[service]["ports"].as_vec().unwrap() {
            assert!(
                port.as_str().unwrap().starts_with("127.0.0.1:"),
                "{service}: {port:?}"
            );
        }
    }
    let config = read("deploy/compose/outboxd.toml");
    assert!(config.contains("endpoint = \"http://minio:9000\""));
    assert!(config.contains("unix_socket = \"/run/outboxd/outboxd.sock\""));
    assert_config_passes(
        "deploy/compose/outboxd.toml",
        &config,
        &[("MINIO_ROOT_USER", "u"), ("MINIO_ROOT_PASSWORD", "p")],
    );
    // Prometheus' config, with the rules where the compose file mounts them.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        read("deploy/compose/prometheus.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("rules/outboxd-alerts.yml"),
        read("deploy/prometheus/outboxd-alerts.yml"),
    )
    .unwrap();
    assert!(read("deploy/compose/prometheus.yml").contains("outboxd:9812"));
    match Command::new("promtool")
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml"))
        .output()
    {
        Ok(output) => assert!(
            output.status.success(),
            "promtool check config: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        Err(_) => assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (tests/run.sh installs it)"
        ),
    }
}

#[test]
fn the_kubernetes_example_wires_config_secret_volumes_and_probes() {
    let config_map = &yaml_documents("deploy/kubernetes/configmap.yaml")[0];
    let secret = &yaml_documents("deploy/kubernetes/secret.yaml")[0];
    let set = &yaml_documents("deploy/kubernetes/statefulset.yaml")[0];
    assert_eq!(text(config_map, "kind"), "ConfigMap");
    assert_eq!(text(secret, "kind"), "Secret");
    assert_eq!(text(set, "kind"), "StatefulSet");
    let pod = &set["spec"]["template"]["spec"];
    let containers = pod["containers"].as_vec().unwrap();
    let sidecar = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("outboxd"))
        .expect("the outboxd container");
    let agent = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .expect("the agent container");
    // Config from the ConfigMap, credentials from the Secret.
    let volumes = pod["volumes"].as_vec().unwrap();
    let config_volume = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("config"))
        .unwrap();
    assert_eq!(
        text(config_volume, "configMap.name"),
        text(config_map, "metadata.name")
    );
    assert_eq!(
        text(sidecar, "envFrom.0.secretRef.name"),
        text(secret, "metadata.name")
    );
    // The socket is shared; the outbox is on a claim, writable via fsGroup.
    let mounts = |c: &Yaml| -> Vec<String> {
        c["volumeMounts"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|m| format!("{}:{}", text(m, "name"), text(m, "mountPath")))
            .collect()
    };
    assert!(mounts(sidecar).contains(&"socket:/run/outboxd".to_owned()));
    assert!(mounts(agent).contains(&"socket:/run/outboxd".to_owned()));
    assert!(mounts(sidecar).contains(&"outbox:/var/lib/outboxd".to_owned()));
    assert_eq!(
        text(set, "spec.volumeClaimTemplates.0.metadata.name"),
        "outbox"
    );
    assert!(pod["securityContext"]["fsGroup"].as_i64().is_some());
    // Probes on /readyz and /healthz, scraped on the metrics port.
    assert_eq!(text(sidecar, "readinessProbe.httpGet.path"), "/readyz");
    assert_eq!(text(sidecar, "livenessProbe.httpGet.path"), "/healthz");
    let annotations = &set["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
    assert_eq!(annotations["prometheus.io/port"].as_str(), Some("9812"));
    // The embedded config passes check-config with the Secret's variables
    // and the per-pod prefix set.
    let mut env: Vec<(String, String)> = secret["stringData"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for var in sidecar["env"].as_vec().unwrap() {
        if let Some(value) = var["value"].as_str() {
            env.push((
                text(var, "name").to_owned(),
                value.replace("$(POD_NAME)", "agent-0"),
            ));
        }
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (ok, printed, stderr) = check_config(
        config_map["data"]["outboxd.toml"]
            .as_str()
            .expect("data.outboxd.toml"),
        &env,
    );
    assert!(ok, "the ConfigMap's outboxd.toml: {stderr}");
    assert!(printed.contains("prefix = \"agent-0/\""), "{printed}");
    assert!(
        !printed.contains("REPLACE_ME"),
        "credentials are masked when printed"
    );
}

#[test]
fn the_dashboard_names_only_metrics_outboxd_exports() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/outboxd-dashboard.json")).unwrap();
    let telemetry = read("src/telemetry.rs");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    let mut named = std::collections::BTreeSet::new();
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(base) = word.strip_prefix("outboxd_") {
                let name = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| word.strip_suffix(suffix))
                    .unwrap_or(word);
                assert!(
                    telemetry.contains(&format!("\"{name}\"")),
                    "the dashboard names {word} ({base}), which src/telemetry.rs does not export"
                );
                named.insert(name.to_owned());
            }
        }
    }
    for key in [
        "outboxd_ingest_events_accepted_total",
        "outboxd_outbox_events",
        "outboxd_outbox_bytes",
        "outboxd_sink_lag_events",
        "outboxd_sink_state",
        "outboxd_sink_retries_total",
        "outboxd_sink_dead_lettered_events_total",
    ] {
        assert!(named.contains(key), "the dashboard shows {key}");
    }
}

#[tokio::test]
async fn outboxd_health_says_whether_the_daemon_is_ready() {
    let mut daemon = Daemon::start("").await;
    let url = format!("http://127.0.0.1:{}", daemon.metrics_port);
    let health = || {
        Command::new(common::binary())
            .args(["health", "--url", &url])
            .output()
            .unwrap()
    };
    let ready = health();
    assert!(
        ready.status.success(),
        "{}",
        String::from_utf8_lossy(&ready.stderr)
    );
    daemon.terminate();
    let gone = health();
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("not answering"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

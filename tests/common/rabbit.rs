//! Faults caused for real, through `rabbitmqctl`: closing one test's own connections (found by
//! the connection name every pdq process gives itself, `pdq:{namespace}...`), and stopping the
//! broker application (only a test that runs alone may do that).

use std::process::Command;

fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl").args(args).output().expect("rabbitmqctl runs (is RabbitMQ installed here?)");
    assert!(out.status.success(), "rabbitmqctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Closes every broker connection whose client-given name contains `needle`; returns how many.
pub fn close_connections(needle: &str) -> usize {
    let listed = rabbitmqctl(&["list_connections", "name", "client_properties", "--formatter", "json"]);
    let conns: Vec<serde_json::Value> = serde_json::from_str(&listed).expect("rabbitmqctl JSON");
    let mut closed = 0;
    for c in conns {
        let props = c["client_properties"].as_array().cloned().unwrap_or_default();
        let name = props.iter().find(|p| p[0] == "connection_name").and_then(|p| p[2].as_str()).unwrap_or("");
        if name.contains(needle) {
            let id = c["name"].as_str().expect("connection id");
            // A connection may close on its own meanwhile; that is not a failure.
            let _ = Command::new("rabbitmqctl").args(["close_connection", id, "pdq fault test"]).output();
            closed += 1;
        }
    }
    closed
}

pub fn stop_app() {
    rabbitmqctl(&["stop_app"]);
}

pub fn start_app() {
    rabbitmqctl(&["start_app"]);
    rabbitmqctl(&["await_startup"]);
}

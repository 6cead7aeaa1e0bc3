//! The `loglog` binary's behaviour without a node: usage and connection
//! errors. (Tests against a real node live in crates/loglogd/tests/e2e_cli.rs,
//! where the `loglogd` binary is available.)

use std::net::TcpListener;
use std::process::{Command, Output};

fn loglog(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loglog"))
        .args(args)
        .env_remove("LOGLOG_CLUSTER")
        .output()
        .unwrap()
}

/// An address where nothing listens.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn one_line_error(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(output.stdout.is_empty(), "{output:?}");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr.trim_end().to_string()
}

#[test]
fn unreachable_nodes_are_a_one_line_error() {
    let first = dead_address();
    let second = dead_address();
    let cluster = format!("{first},{second}");
    for args in [
        vec!["--cluster", &cluster, "append", "x"],
        vec!["--cluster", &cluster, "read", "--from", "0"],
        vec!["--cluster", &cluster, "bench", "--duration", "1s"],
    ] {
        let line = one_line_error(&loglog(&args));
        assert!(line.contains("cannot connect"), "{line}");
        // Every address was tried, in order.
        assert!(line.contains(&cluster), "{line}");
    }
}

#[test]
fn status_lists_unreachable_nodes_and_fails_when_none_answers() {
    let dead = dead_address();
    let output = loglog(&["--cluster", &dead, "status"]);
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with(&format!("{dead} unreachable: ")),
        "{stdout}"
    );
    let output = loglog(&["--cluster", &dead, "status", "--json"]);
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        stdout.starts_with(&format!(r#"[{{"address":"{dead}","error":"#)),
        "{stdout}"
    );
}

#[test]
fn usage_errors_are_reported_by_clap() {
    assert_eq!(loglog(&["read"]).status.code(), Some(2));
    assert_eq!(
        loglog(&["bench", "--duration", "soon"]).status.code(),
        Some(2)
    );
    assert_eq!(loglog(&["nonsense"]).status.code(), Some(2));
    assert!(loglog(&["--help"]).status.success());
    let line = one_line_error(&loglog(&["--cluster", ",", "status"]));
    assert!(line.contains("no address"), "{line}");
}

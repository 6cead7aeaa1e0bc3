//! End to end: the real `loglog` command line against the real `loglogd`
//! binary, each on its own free port and temp directory.
//!
//! `loglog` is a binary of another package (loglog-cli), so cargo does not
//! hand its path to this test: the test looks for it next to `loglogd` in
//! the same target directory, building it first with `cargo build -p
//! loglog-cli` (a no-op when it is up to date; `cargo test --workspace`
//! has built it already, as loglog-cli's own integration tests need it).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use loglog_proto::entry::{EntryIter, EntryKind, DEFAULT_MAX_PAYLOAD};
use loglog_proto::producer::{ProducerTag, ENTRY_FLAG_PRODUCER};

mod common;
use common::loglog_binary;

/// A running `loglogd`, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(extra_args: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let addr = common::free_addr();
        let log = File::create(dir.path().join("loglogd.log")).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_loglogd"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--listen")
            .arg(addr.to_string())
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        common::wait_until_listening(&mut child, addr, Duration::from_secs(30));
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// A `loglog` command aimed at this server through LOGLOG_CLUSTER.
    fn loglog(&self, args: &[&str]) -> Command {
        let mut command = Command::new(loglog_binary());
        command
            .args(args)
            .env("LOGLOG_CLUSTER", self.addr.to_string());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.loglog(args).output().unwrap()
    }

    /// Runs `loglog` with `stdin` as its standard input.
    fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .loglog(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs `loglog`, which must succeed, and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert_success(&output, args);
        String::from_utf8(output.stdout).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn assert_success(output: &Output, args: &[&str]) {
    assert!(
        output.status.success(),
        "loglog {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Asserts a failure with exit code 1 and one `error: ...` line on stderr
/// (no panic, no backtrace); returns that line.
fn assert_one_line_error(output: &Output) -> String {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr}");
    assert!(stderr.starts_with("error: "), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    stderr.trim_end().to_string()
}

#[test]
fn append_read_and_status_through_the_cli() {
    let server = Server::start(&[]);
    // Offset 0 holds the node's no-op entry (16 bytes). Each data entry is
    // its 16-byte header, the 16-byte producer envelope, then the payload.
    assert_eq!(server.ok(&["append", "hello"]), "16\n");
    assert_eq!(server.ok(&["append", "two words", "third"]), "53\n94\n");
    let output = server.run_with_stdin(&["append", "--lines"], b"line one\n\nline three\n");
    assert_success(&output, &["append", "--lines"]);
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "131\n171\n203\n");
    let output = server.run_with_stdin(&["append"], b"all of\nstdin");
    assert_success(&output, &["append"]);
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "245\n");
    let end = 245 + 16 + 16 + 12;

    assert_eq!(
        server.ok(&["read", "--from", "0"]),
        "hello\ntwo words\nthird\nline one\n\nline three\nall of\nstdin\n"
    );
    assert_eq!(
        server.ok(&["read", "--from", "53", "--to", "131"]),
        "two words\nthird\n"
    );
    assert_eq!(
        server.ok(&["read", "--from", "0", "--to", "94", "--format", "json"]),
        concat!(
            r#"{"offset":16,"term":1,"len":5,"data_b64":"aGVsbG8="}"#,
            "\n",
            r#"{"offset":53,"term":1,"len":9,"data_b64":"dHdvIHdvcmRz"}"#,
            "\n"
        )
    );
    assert_eq!(
        server.ok(&["read", "--from", "16", "--to", "53", "--format", "hex"]),
        "68656c6c6f\n"
    );
    // Raw: the log's bytes as stored, which parse again, no-op included;
    // data entries have header flag bit 0 and start with the envelope.
    let raw = server.run(&["read", "--from", "0", "--format", "raw"]);
    assert_success(&raw, &["read", "--format", "raw"]);
    assert_eq!(raw.stdout.len(), end);
    let entries: Vec<_> = EntryIter::new(&raw.stdout, 0, DEFAULT_MAX_PAYLOAD)
        .map(|entry| entry.unwrap())
        .map(|entry| {
            let payload = match ProducerTag::split(entry.payload) {
                Some((_, user)) if entry.header.flags == ENTRY_FLAG_PRODUCER => user,
                _ => entry.payload,
            };
            (entry.offset, entry.header.kind, payload.to_vec())
        })
        .collect();
    assert_eq!(entries.len(), 8);
    assert_eq!(entries[0], (0, EntryKind::NoOp, vec![]));
    assert_eq!(entries[1], (16, EntryKind::Data, b"hello".to_vec()));
    assert_eq!(
        entries[7],
        (245, EntryKind::Data, b"all of\nstdin".to_vec())
    );

    let status = server.ok(&["status"]);
    assert_eq!(
        status,
        format!(
            "{} node_id=1 role=leader term=1 start=0 end={end} commit={end} segments=1 leader_id=1\n",
            server.addr
        )
    );
    let status = server.ok(&["status", "--json"]);
    assert_eq!(
        status,
        format!(
            r#"[{{"address":"{}","node_id":1,"role":"leader","term":1,"start_offset":0,"end_offset":{end},"commit_offset":{end},"segment_count":1,"leader_id":1}}]"#,
            server.addr
        ) + "\n"
    );
    // --cluster wins over the environment.
    let output = server
        .loglog(&["--cluster", &server.addr.to_string(), "status"])
        .env("LOGLOG_CLUSTER", "127.0.0.1:1")
        .output()
        .unwrap();
    assert_success(&output, &["status"]);
}

#[test]
fn read_follow_streams_new_entries() {
    let server = Server::start(&[]);
    let first = server.ok(&["append", "first"]);
    let mut follower = server
        .loglog(&[
            "read",
            "--from",
            first.trim(),
            "--follow",
            "--format",
            "json",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let line = lines.next().unwrap().unwrap();
    assert!(line.starts_with(r#"{"offset":16,"#), "{line}");
    let offset = server.ok(&["append", "second"]);
    let line = lines.next().unwrap().unwrap();
    assert_eq!(
        line,
        format!(
            r#"{{"offset":{},"term":1,"len":6,"data_b64":"c2Vjb25k"}}"#,
            offset.trim()
        )
    );
    // Still following: not exited.
    assert!(follower.try_wait().unwrap().is_none());
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn errors_exit_non_zero_with_one_line() {
    let server = Server::start(&["--max-entry-size", "1KiB"]);
    server.ok(&["append", "x"]);

    let too_large = server.run_with_stdin(&["append"], &[b'y'; 2000]);
    let line = assert_one_line_error(&too_large);
    assert!(line.contains("too large"), "{line}");

    let past_end = server.run(&["read", "--from", "1000000"]);
    let line = assert_one_line_error(&past_end);
    assert!(line.contains("past the end"), "{line}");

    let inside = server.run(&["read", "--from", "3"]);
    assert_one_line_error(&inside);

    let dead = common::free_addr().to_string();
    let refused = Command::new(loglog_binary())
        .args(["--cluster", &dead, "append", "nobody"])
        .output()
        .unwrap();
    let line = assert_one_line_error(&refused);
    assert!(
        line.contains("cannot connect") && line.contains(&dead),
        "{line}"
    );

    // Usage errors come from clap, with its own exit code.
    let usage = server.run(&["read"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn bench_reports_json() {
    let server = Server::start(&[]);
    let output = server.run(&[
        "bench",
        "--writers",
        "4",
        "--size",
        "64",
        "--duration",
        "1s",
        "--json",
    ]);
    assert_success(&output, &["bench"]);
    let report = String::from_utf8(output.stdout).unwrap();
    assert_eq!(report.lines().count(), 1, "{report}");
    for field in [
        r#""workload":"append""#,
        r#""writers":4,"#,
        r#""size":64,"#,
        r#""appends_per_s":"#,
        r#""mb_per_s":"#,
        r#""latency_us":{"p50":"#,
        r#""p99.9":"#,
    ] {
        assert!(report.contains(field), "{field} missing in {report}");
    }
    let status = server.ok(&["status", "--json"]);
    assert!(
        !status.contains(r#""commit_offset":16,"#),
        "the bench appended nothing: {status}"
    );
}

/// On a single node, `loglog admin trim` deletes whole segments below the
/// offset and prints the new start; membership commands are refused with
/// one error line; `status` keeps its single-node line.
#[test]
fn admin_trim_and_status_on_a_single_node() {
    let server = Server::start(&["--segment-size", "4096"]);
    let payload = "x".repeat(1000);
    let mut offsets = Vec::new();
    for _ in 0..20 {
        offsets.push(
            server
                .ok(&["append", &payload])
                .trim()
                .parse::<u64>()
                .unwrap(),
        );
    }
    let cut = offsets[10];
    let answer = server.ok(&["admin", "trim", &cut.to_string()]);
    let start: u64 = answer
        .trim()
        .strip_prefix("log starts at ")
        .unwrap_or_else(|| panic!("{answer}"))
        .parse()
        .unwrap();
    assert!(start > 0 && start <= cut, "{answer}");
    let status = server.ok(&["status"]);
    assert!(status.contains(&format!(" start={start} ")), "{status}");
    assert!(!status.contains("peer_addr="), "single-node line: {status}");
    let refused = assert_one_line_error(&server.run(&["admin", "remove-node", "2"]));
    assert!(refused.contains("not a cluster member"), "{refused}");
}

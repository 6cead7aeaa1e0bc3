//! `loglog read --from end-N/--last`, `loglog tail`, `--batches`,
//! `bench --batch`, `bench --readers`/`--plot` and `bench --read-all` against a real node: an embedded `loglogd::Node` (real
//! files, real fsync) serving TCP on a free port, driven through the real
//! `loglog` binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use loglogd::{Config, Node};

struct TestNode {
    runtime: tokio::runtime::Runtime,
    node: Node,
    addr: String,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn start() -> TestNode {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::new(dir.path().join("data"));
        config.listen = Some("127.0.0.1:0".parse().unwrap());
        let node = runtime.block_on(Node::start(config)).unwrap();
        let addr = node.local_addr().unwrap().to_string();
        TestNode {
            runtime,
            node,
            addr,
            _dir: dir,
        }
    }

    fn append(&self, payload: &[u8]) -> u64 {
        self.runtime
            .block_on(self.node.append(payload.to_vec()))
            .unwrap()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loglog"));
        command
            .args(["--cluster", &self.addr])
            .args(args)
            .env_remove("LOGLOG_CLUSTER");
        command
    }

    fn ok(&self, args: &[&str]) -> String {
        let output: Output = self.command(args).output().unwrap();
        assert!(output.status.success(), "loglog {args:?}: {output:?}");
        String::from_utf8(output.stdout).unwrap()
    }
}

#[test]
fn read_last_entries_and_relative_offsets() {
    let node = TestNode::start();
    for i in 0..10 {
        node.append(format!("e{i}").as_bytes());
    }
    assert_eq!(node.ok(&["read", "--last", "3"]), "e7\ne8\ne9\n");
    assert_eq!(node.ok(&["read", "--from", "end-2"]), "e8\ne9\n");
    assert_eq!(node.ok(&["read", "--from", "end"]), "");
    // More than the log holds: all of it.
    assert_eq!(node.ok(&["read", "--last", "100"]).lines().count(), 10);
    let json = node.ok(&["read", "--last", "1", "--format", "json"]);
    assert!(json.starts_with(r#"{"offset":"#), "{json}");
    assert!(json.contains(r#""data_b64":"ZTk=""#), "{json}");
    // --from and --last together is a usage error.
    let output = node
        .command(&["read", "--from", "0", "--last", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn batches_expand_into_one_record_per_sub_entry() {
    let node = TestNode::start();
    let batch = loglog::batch::encode_batch([&b"one"[..], b"", b"three"]).unwrap();
    let offset = node.append(&batch);
    let json = node.ok(&["read", "--from", "0", "--batches", "--format", "json"]);
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.len(), 3, "{json}");
    assert_eq!(
        lines[0],
        format!(r#"{{"offset":{offset},"index":0,"term":1,"len":3,"data_b64":"b25l"}}"#)
    );
    assert_eq!(
        lines[1],
        format!(r#"{{"offset":{offset},"index":1,"term":1,"len":0,"data_b64":""}}"#)
    );
    assert!(lines[2].contains(r#""index":2,"#), "{json}");
    assert_eq!(
        node.ok(&["read", "--from", "0", "--batches"]),
        "one\n\nthree\n"
    );
    // A plain entry is not a batch: a one-line error, exit 1.
    node.append(b"plain");
    let output = node
        .command(&["read", "--from", "0", "--batches"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("error: entry at offset"), "{stderr}");
    assert!(stderr.contains("not a batch"), "{stderr}");
}

#[test]
fn tail_prints_the_last_entries_then_follows() {
    let node = TestNode::start();
    for i in 0..5 {
        node.append(format!("old{i}").as_bytes());
    }
    let mut tail = node
        .command(&["tail", "-n", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "old3");
    assert_eq!(lines.next().unwrap().unwrap(), "old4");
    for i in 0..3 {
        node.append(format!("new{i}").as_bytes());
        assert_eq!(lines.next().unwrap().unwrap(), format!("new{i}"));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(tail.try_wait().unwrap().is_none(), "tail keeps following");
    tail.kill().unwrap();
    tail.wait().unwrap();
}

#[test]
fn bench_with_batches_counts_records() {
    let node = TestNode::start();
    let json = node.ok(&[
        "bench",
        "--writers",
        "4",
        "--size",
        "16",
        "--duration",
        "300ms",
        "--batch",
        "10",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let appends = report["appends"].as_u64().unwrap();
    assert!(appends > 0, "{json}");
    assert_eq!(report["batch"], 10);
    assert_eq!(report["records"].as_u64().unwrap(), appends * 10);
    let text = node.ok(&[
        "bench",
        "--writers",
        "2",
        "--duration",
        "200ms",
        "--batch",
        "4",
    ]);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(
        text.lines().last().unwrap().starts_with("batches of 4: "),
        "{text}"
    );
    // Every appended entry is a well-formed batch: 10 records of 16 bytes
    // per append of the first run, 4 of 128 bytes per append of the second.
    let records = node.ok(&["read", "--from", "0", "--batches", "--format", "hex"]);
    let small = records.lines().filter(|line| line.len() == 32).count() as u64;
    let large = records.lines().filter(|line| line.len() == 256).count() as u64;
    assert_eq!(small, appends * 10);
    assert!(large > 0 && large.is_multiple_of(4), "{large}");
    assert_eq!(small + large, records.lines().count() as u64);
}

#[test]
fn bench_with_tail_readers_measures_end_to_end_and_read_all_reads_everything() {
    let node = TestNode::start();
    node.append(b"before the bench");
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("latency.svg");
    let json = node.ok(&[
        "bench",
        "--writers",
        "8",
        "--size",
        "64",
        "--duration",
        "500ms",
        "--readers",
        "2",
        "--plot",
        plot.to_str().unwrap(),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    let appends = report["appends"].as_u64().unwrap();
    assert!(appends > 0, "{json}");
    assert_eq!(report["readers"], 2);
    // Each reader saw every append of the run, and nothing else counted.
    assert_eq!(
        report["entries_seen"].as_u64().unwrap(),
        2 * appends,
        "{json}"
    );
    let end_to_end = &report["end_to_end_us"];
    for name in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(end_to_end[name].as_u64().unwrap() > 0, "{json}");
    }
    assert!(end_to_end["p50"].as_u64() <= end_to_end["max"].as_u64());
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.starts_with("<svg"), "{svg:.100}");
    assert!(
        svg.contains("end to end"),
        "the plot has the end-to-end curve"
    );
    assert!(svg.trim_end().ends_with("</svg>"));

    // The payloads kept their size; each starts with the run's stamp.
    let entries = node.ok(&["read", "--from", "0", "--format", "json"]);
    let payloads: Vec<Vec<u8>> = entries
        .lines()
        .map(|line| {
            let entry: serde_json::Value = serde_json::from_str(line).unwrap();
            base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                entry["data_b64"].as_str().unwrap(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(payloads.len() as u64, appends + 1);
    assert_eq!(payloads[0], b"before the bench");
    let run_id = &payloads[1][..8];
    for payload in &payloads[1..] {
        assert_eq!(payload.len(), 64);
        assert_eq!(&payload[..8], run_id);
        assert!(payload[16..].iter().all(|byte| *byte == b'x'));
    }

    // Text: the end-to-end line comes after the usual three.
    let text = node.ok(&[
        "bench",
        "--writers",
        "2",
        "--duration",
        "200ms",
        "--readers",
        "1",
    ]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[3].starts_with("end-to-end us (1 readers, "), "{text}");

    // --read-all reads the whole committed log, no-op included.
    let status: serde_json::Value =
        serde_json::from_str(node.ok(&["status", "--json"]).trim()).unwrap();
    let commit = status[0]["commit_offset"].as_u64().unwrap();
    let entries_now = node
        .ok(&["read", "--from", "0", "--format", "hex"])
        .lines()
        .count() as u64;
    let json = node.ok(&["bench", "--read-all", "--json"]);
    let report: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(report["workload"], "read_all");
    assert_eq!(report["start_offset"], 0);
    assert_eq!(report["end_offset"].as_u64().unwrap(), commit);
    assert_eq!(report["bytes"].as_u64().unwrap(), commit);
    assert_eq!(report["entries"].as_u64().unwrap(), entries_now);
    assert!(report["mb_per_s"].as_f64().unwrap() > 0.0, "{json}");

    // Too small for the stamp: a clear one-line error.
    let output = node
        .command(&[
            "bench",
            "--readers",
            "1",
            "--size",
            "15",
            "--duration",
            "100ms",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.starts_with("error: --readers needs --size of at least 16 bytes"),
        "{stderr}"
    );
}

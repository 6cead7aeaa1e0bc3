//! A full disk, for real: the `loglogd` binary runs on a 1 MiB tmpfs
//! mounted in its own mount namespace (`unshare -rm`, no root needed).
//! Appends past the space answer `Unavailable`; every acknowledged append
//! stays readable; the node keeps serving reads and stops cleanly.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loglog_proto::entry::{EntryIter, EntryKind};
use loglog_proto::wire::{
    FrameHeader, NodeStatus, Request, ServerError, FRAME_HEADER_LEN, READ_RESPONSE_PREFIX_LEN,
    STATUS_OK,
};

fn call(stream: &mut TcpStream, request: Request<'_>) -> Result<Vec<u8>, ServerError> {
    let mut frame = Vec::new();
    request.encode(1, &mut frame);
    stream.write_all(&frame).unwrap();
    let mut header = [0u8; FRAME_HEADER_LEN];
    stream.read_exact(&mut header).unwrap();
    let header = FrameHeader::decode(&header, u32::MAX).unwrap().unwrap();
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).unwrap();
    if header.aux == STATUS_OK {
        Ok(body)
    } else {
        Err(ServerError::decode(header.aux, &body))
    }
}

#[test]
fn a_full_disk_refuses_appends_and_loses_nothing_acknowledged() {
    let mount = tempfile::tempdir().unwrap();
    let addr: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let script = format!(
        "mount -t tmpfs -o size=1m loglog-full {dir} && exec {bin} --data-dir {dir}/data \
         --listen {addr} --segment-size 256KiB --max-entry-size 64KiB",
        dir = mount.path().display(),
        bin = env!("CARGO_BIN_EXE_loglogd"),
    );
    let mut child = Command::new("unshare")
        .args(["-rm", "sh", "-c", &script])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare(1) runs (util-linux)");

    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        if let Ok(stream) = TcpStream::connect(addr) {
            break stream;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut log = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut log)
                .unwrap();
            panic!("loglogd exited: {status}: {log}");
        }
        assert!(Instant::now() < deadline, "loglogd did not listen");
        std::thread::sleep(Duration::from_millis(20));
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();

    let mut acknowledged = Vec::new();
    let mut refusal = None;
    for index in 0..2_000u32 {
        let mut payload = vec![index as u8; 4096];
        payload[..4].copy_from_slice(&index.to_le_bytes());
        let answer = call(
            &mut stream,
            Request::Append {
                payload: &payload,
                no_wait: false,
            },
        );
        match answer {
            Ok(body) => acknowledged.push((u64::from_le_bytes(body.try_into().unwrap()), payload)),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
    }
    let refusal = refusal.expect("1 MiB fills up before 8 MiB of appends");
    match &refusal {
        ServerError::Unavailable { message } => {
            assert!(message.contains("disk full"), "{message}")
        }
        other => panic!("expected Unavailable, got {other}"),
    }
    assert!(!acknowledged.is_empty());

    // Still refusing what does not fit (a refusal is not fatal: a smaller
    // entry may still fit, and freed space would be used again), still
    // reading: every acknowledged entry is there.
    let again = call(
        &mut stream,
        Request::Append {
            payload: &[7u8; 4096],
            no_wait: false,
        },
    );
    assert!(
        matches!(again, Err(ServerError::Unavailable { .. })),
        "{again:?}"
    );
    let status = NodeStatus::decode(&call(&mut stream, Request::Status).unwrap()).unwrap();
    let mut found = Vec::new();
    let mut offset = status.start_offset;
    while offset < status.commit_offset {
        let body = call(
            &mut stream,
            Request::Read {
                offset,
                max_bytes: 64 * 1024,
                wait_ms: 0,
                linearizable: false,
            },
        )
        .unwrap();
        let entries = &body[READ_RESPONSE_PREFIX_LEN..];
        for entry in EntryIter::new(entries, offset, u32::MAX) {
            let entry = entry.unwrap();
            if entry.header.kind == EntryKind::Data {
                found.push((entry.offset, entry.payload.to_vec()));
            }
        }
        offset += entries.len() as u64;
    }
    assert_eq!(found, acknowledged);

    // A clean stop even so.
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "loglogd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(exit.success(), "exit {exit}: {log}");
}

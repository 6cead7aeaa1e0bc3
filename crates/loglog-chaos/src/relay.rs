//! Relays that delay and duplicate peer messages (this kernel has no netem).
//!
//! Every node's peers dial it through a relay that runs inside the node's
//! own namespace (a harness thread moved there with `setns`), listening on
//! [`RELAY_PORT`] of the node's address and forwarding to the node's real
//! peer listener. Peer packets still cross the same interfaces and iptables
//! chains as before (the dialer's address to the node's), so partitions and
//! loss apply unchanged; the relay adds what iptables cannot:
//!
//! * **delay**: every frame is held until `delay` after it arrived, in
//!   order (a slow link; messages of different links reorder);
//! * **duplication**: a frame is sent twice with the given probability.
//!
//! The relay understands the peer transport's framing (a handshake, then
//! `length u32 LE, body` frames; see loglogd's `cluster/transport.rs`), so
//! a duplicate is a whole message, never torn bytes. A frame longer than
//! [`MAX_FRAME`] or a malformed handshake closes the relayed connection, as
//! the node itself would.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Port of every node's relay (on the node's address).
pub const RELAY_PORT: u16 = 7200;
/// Largest frame relayed: above any AppendEntries batch loglogd sends.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Frames held per relayed connection (delayed ones wait here); more
/// stop reading the dialer (TCP backpressure).
const MAX_HELD_FRAMES: usize = 4096;

/// What the relays of one node do now; changed by the fault schedule.
#[derive(Default)]
pub struct LinkFaults {
    delay_ms: AtomicU64,
    duplicate_per_million: AtomicU32,
}

impl LinkFaults {
    pub fn set(&self, delay: Duration, duplicate_probability: f64) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
        let per_million = (duplicate_probability.clamp(0.0, 1.0) * 1e6) as u32;
        self.duplicate_per_million
            .store(per_million, Ordering::Relaxed);
    }

    pub fn clear(&self) {
        self.set(Duration::ZERO, 0.0);
    }

    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Relaxed))
    }

    fn duplicate_per_million(&self) -> u32 {
        self.duplicate_per_million.load(Ordering::Relaxed)
    }
}

/// The relays of one run, one per node; stopped on drop.
pub struct Relays {
    faults: Vec<Arc<LinkFaults>>,
    stop: watch::Sender<bool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relays {
    /// Starts a relay in each `(namespace, node address)`, forwarding to
    /// `node address:peer_port`. Returns once every relay listens.
    pub fn start(nodes: &[(String, Ipv4Addr)], peer_port: u16, seed: u64) -> Result<Relays> {
        let (stop, stopped) = watch::channel(false);
        let mut relays = Relays {
            faults: Vec::new(),
            stop,
            threads: Vec::new(),
        };
        for (index, (namespace, ip)) in nodes.iter().enumerate() {
            let faults = Arc::new(LinkFaults::default());
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("relay-{}", index + 1))
                .spawn({
                    let namespace = namespace.clone();
                    let faults = faults.clone();
                    let stopped = stopped.clone();
                    let listen = SocketAddr::from((*ip, RELAY_PORT));
                    let target = SocketAddr::from((*ip, peer_port));
                    let seed = seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    move || {
                        relay_thread(&namespace, listen, target, faults, seed, stopped, ready_tx)
                    }
                })
                .context("cannot start a relay thread")?;
            relays.threads.push(thread);
            relays.faults.push(faults);
            ready_rx
                .recv()
                .context("a relay thread died before listening")??;
        }
        Ok(relays)
    }

    /// The fault controls of node `index`'s inbound peer links.
    pub fn node(&self, index: usize) -> &LinkFaults {
        &self.faults[index]
    }

    pub fn clear(&self) {
        for faults in &self.faults {
            faults.clear();
        }
    }
}

impl Drop for Relays {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn relay_thread(
    namespace: &str,
    listen: SocketAddr,
    target: SocketAddr,
    faults: Arc<LinkFaults>,
    seed: u64,
    mut stopped: watch::Receiver<bool>,
    ready: std::sync::mpsc::Sender<Result<()>>,
) {
    let setup = (|| -> Result<(tokio::runtime::Runtime, TcpListener)> {
        // Sockets this thread creates from now on live in the node's
        // namespace; the rest of the process is unaffected.
        let path = format!("/var/run/netns/{namespace}");
        let handle = std::fs::File::open(&path).with_context(|| format!("cannot open {path}"))?;
        rustix::thread::move_into_link_name_space(
            handle.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .with_context(|| format!("setns into {namespace}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let listener = runtime
            .block_on(TcpListener::bind(listen))
            .with_context(|| format!("relay cannot listen on {listen}"))?;
        Ok((runtime, listener))
    })();
    let (runtime, listener) = match setup {
        Ok(ready_parts) => {
            let _ = ready.send(Ok(()));
            ready_parts
        }
        Err(error) => {
            let _ = ready.send(Err(error));
            return;
        }
    };
    runtime.block_on(async move {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        loop {
            tokio::select! {
                _ = stopped.changed() => return,
                accepted = listener.accept() => {
                    let Ok((dialer, _)) = accepted else { continue };
                    let connection_seed = rng.gen();
                    let faults = faults.clone();
                    let stopped = stopped.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = relay_connection(dialer, target, faults, connection_seed) => {}
                            _ = until_stopped(stopped) => {}
                        }
                    });
                }
            }
        }
    });
}

async fn until_stopped(mut stopped: watch::Receiver<bool>) {
    while !*stopped.borrow() {
        if stopped.changed().await.is_err() {
            return;
        }
    }
}

/// Relays one peer connection until either side closes or misbehaves.
async fn relay_connection(
    dialer: TcpStream,
    target: SocketAddr,
    faults: Arc<LinkFaults>,
    seed: u64,
) -> std::io::Result<()> {
    let node = TcpStream::connect(target).await?;
    dialer.set_nodelay(true)?;
    node.set_nodelay(true)?;
    let (mut from_dialer, mut to_dialer) = dialer.into_split();
    let (mut from_node, mut to_node) = node.into_split();
    // The node only ever answers the handshake; copy whatever it says.
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_node, &mut to_dialer).await;
    });
    // Handshake: 26 fixed bytes, the last two the cluster id's length.
    let mut fixed = [0u8; 26];
    from_dialer.read_exact(&mut fixed).await?;
    let id_len = usize::from(u16::from_le_bytes([fixed[24], fixed[25]]));
    let mut cluster_id = vec![0u8; id_len];
    from_dialer.read_exact(&mut cluster_id).await?;
    to_node.write_all(&fixed).await?;
    to_node.write_all(&cluster_id).await?;

    let (held_tx, mut held_rx) = mpsc::channel::<(Instant, Vec<u8>, bool)>(MAX_HELD_FRAMES);
    let reader = async move {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        loop {
            let mut length = [0u8; 4];
            from_dialer.read_exact(&mut length).await?;
            let len = u32::from_le_bytes(length) as usize;
            if len > MAX_FRAME {
                return Err(std::io::Error::other("frame over the relay's limit"));
            }
            let mut frame = vec![0u8; 4 + len];
            frame[..4].copy_from_slice(&length);
            from_dialer.read_exact(&mut frame[4..]).await?;
            let due = Instant::now() + faults.delay();
            let twice = rng.gen_range(0..1_000_000) < faults.duplicate_per_million();
            if held_tx.send((due, frame, twice)).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async move {
        while let Some((due, frame, twice)) = held_rx.recv().await {
            tokio::time::sleep_until(due).await;
            to_node.write_all(&frame).await?;
            if twice {
                to_node.write_all(&frame).await?;
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let result = tokio::select! {
        result = reader => result,
        result = writer => result,
    };
    answers.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A dialer's handshake and frames pass through in order; with
    /// duplication at probability 1 each frame arrives twice, and with a
    /// delay none arrives early.
    #[tokio::test]
    async fn relays_frames_whole_duplicated_and_delayed() {
        let node = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = node.local_addr().unwrap();
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = relay.local_addr().unwrap();
        let faults = Arc::new(LinkFaults::default());
        faults.set(Duration::from_millis(150), 1.0);
        let relay_faults = faults.clone();
        tokio::spawn(async move {
            let (dialer, _) = relay.accept().await.unwrap();
            let _ = relay_connection(dialer, target, relay_faults, 1).await;
        });

        let mut dialer = TcpStream::connect(relay_addr).await.unwrap();
        let mut handshake = b"LLPEER01".to_vec();
        handshake.extend_from_slice(&1u64.to_le_bytes());
        handshake.extend_from_slice(&2u64.to_le_bytes());
        handshake.extend_from_slice(&3u16.to_le_bytes());
        handshake.extend_from_slice(b"abc");
        let sent = Instant::now();
        dialer.write_all(&handshake).await.unwrap();
        for body in [&b"first"[..], &b"second"[..]] {
            dialer
                .write_all(&(body.len() as u32).to_le_bytes())
                .await
                .unwrap();
            dialer.write_all(body).await.unwrap();
        }

        let (mut accepted, _) = node.accept().await.unwrap();
        let mut got = vec![0u8; handshake.len()];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(got, handshake);
        accepted.write_all(&[0]).await.unwrap();
        let mut answer = [9u8];
        dialer.read_exact(&mut answer).await.unwrap();
        assert_eq!(
            answer,
            [0],
            "the node's handshake answer reaches the dialer"
        );
        for expected in [&b"first"[..], b"first", b"second", b"second"] {
            let mut length = [0u8; 4];
            accepted.read_exact(&mut length).await.unwrap();
            let mut body = vec![0u8; u32::from_le_bytes(length) as usize];
            accepted.read_exact(&mut body).await.unwrap();
            assert_eq!(body, expected);
        }
        assert!(
            sent.elapsed() >= Duration::from_millis(150),
            "delivered early"
        );
    }
}

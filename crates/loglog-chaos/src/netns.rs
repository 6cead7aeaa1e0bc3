//! Network namespaces for one run: a hub namespace holding a bridge, one
//! namespace per node with a veth onto the bridge, and a veth from the root
//! namespace into the bridge for the workload client. Addresses are in
//! 10.213.S.0/24 (S picked per run) and exist only on these interfaces:
//! traffic never leaves the machine.
//!
//! Faults are iptables rules in a `CHAOS` chain of each node namespace
//! (hooked into INPUT and OUTPUT), so healing is one flush per node.
//!
//! Every name carries a per-run prefix `llchaos-<pid>-<n>`; [`Network`]'s
//! `Drop` deletes the namespaces (which destroys their veths, and the root
//! ends with them), and [`clean_stale`] removes namespaces left by a run
//! whose process is gone.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Namespace names start with this, then `<pid>-<run counter>-`.
pub const PREFIX: &str = "llchaos-";

/// Runs `program args`, failing with its stderr when it exits non-zero.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// True when this process can create namespaces and use iptables: root, with
/// `ip` and `iptables` on the PATH. Returns why not otherwise.
pub fn capability() -> Result<(), String> {
    let uid = run("id", &["-u"]).map_err(|error| error.to_string())?;
    if uid.trim() != "0" {
        return Err(format!("not root (uid {})", uid.trim()));
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|output| output.status.success())
            .unwrap_or(false);
        if !found {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

/// Deletes namespaces with our prefix whose creating process is gone (a
/// killed earlier run).
pub fn clean_stale() -> Result<()> {
    let list = run("ip", &["netns", "list"])?;
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Nodes a killed run left behind still run in the namespace.
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for orphan in pids.split_whitespace() {
                    let _ = run("kill", &["-KILL", orphan]);
                }
            }
            // Best effort: another cleaner may have been first.
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
    Ok(())
}

static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// The namespaces and links of one run; removed on drop.
pub struct Network {
    tag: String,
    subnet: u8,
    hub: String,
    nodes: Vec<String>,
    host_if: String,
    created: Vec<String>,
}

impl Network {
    /// Creates the hub, `node_count` node namespaces and the root veth.
    pub fn create(node_count: usize) -> Result<Network> {
        assert!((1..=200).contains(&node_count), "node count fits the /24");
        clean_stale()?;
        let pid = std::process::id();
        let counter = RUN_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{PREFIX}{pid}-{counter}");
        let subnet = pick_subnet(pid, counter)?;
        // Interface names are at most 15 bytes: "llc" + 8 hex digits + suffix.
        let short = format!("llc{:08x}", (pid << 8) ^ counter);
        let mut network = Network {
            hub: format!("{tag}-hub"),
            nodes: (1..=node_count).map(|id| format!("{tag}-n{id}")).collect(),
            host_if: format!("{short}h"),
            tag,
            subnet,
            created: Vec::new(),
        };
        network.build(&short)?;
        Ok(network)
    }

    fn build(&mut self, short: &str) -> Result<()> {
        let hub = self.hub.clone();
        run("ip", &["netns", "add", &hub])?;
        self.created.push(hub.clone());
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        run("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        // The root namespace's way in: a veth whose peer joins the bridge.
        let host_peer = format!("{short}x");
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_if,
                "type",
                "veth",
                "peer",
                "name",
                &host_peer,
            ],
        )?;
        run("ip", &["link", "set", &host_peer, "netns", &hub])?;
        run(
            "ip",
            &["-n", &hub, "link", "set", &host_peer, "master", "br0", "up"],
        )?;
        let host_cidr = format!("{}/24", self.host_ip());
        run("ip", &["addr", "add", &host_cidr, "dev", &self.host_if])?;
        run("ip", &["link", "set", &self.host_if, "up"])?;
        for index in 0..self.nodes.len() {
            let ns = self.nodes[index].clone();
            run("ip", &["netns", "add", &ns])?;
            self.created.push(ns.clone());
            let inner = format!("{short}{index}");
            let outer = format!("{short}{index}b");
            run(
                "ip",
                &[
                    "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                ],
            )?;
            run("ip", &["link", "set", &inner, "netns", &ns])?;
            run("ip", &["link", "set", &outer, "netns", &hub])?;
            run(
                "ip",
                &["-n", &hub, "link", "set", &outer, "master", "br0", "up"],
            )?;
            run("ip", &["-n", &ns, "link", "set", &inner, "name", "eth0"])?;
            let cidr = format!("{}/24", self.node_ip(index));
            run("ip", &["-n", &ns, "addr", "add", &cidr, "dev", "eth0"])?;
            run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
            run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
            self.iptables(index, &["-N", "CHAOS"])?;
            self.iptables(index, &["-A", "INPUT", "-j", "CHAOS"])?;
            self.iptables(index, &["-A", "OUTPUT", "-j", "CHAOS"])?;
        }
        Ok(())
    }

    /// Names the run (the namespace prefix).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn node_namespace(&self, index: usize) -> &str {
        &self.nodes[index]
    }

    pub fn node_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, index as u8 + 1)
    }

    /// The workload client's address (root namespace end of the veth).
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 254)
    }

    fn iptables(&self, index: usize, args: &[&str]) -> Result<()> {
        let mut all = vec!["netns", "exec", &self.nodes[index], "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all).map(drop)
    }

    /// Node `index` drops every packet coming from `from` (one way).
    pub fn drop_from(&self, index: usize, from: Ipv4Addr) -> Result<()> {
        let source = from.to_string();
        self.iptables(index, &["-A", "CHAOS", "-s", &source, "-j", "DROP"])
    }

    /// Node `index` drops every packet it sends to `to` (one way).
    pub fn drop_to(&self, index: usize, to: Ipv4Addr) -> Result<()> {
        let destination = to.to_string();
        self.iptables(index, &["-A", "CHAOS", "-d", &destination, "-j", "DROP"])
    }

    /// Cuts nodes `a` and `b` apart in both directions.
    pub fn cut(&self, a: usize, b: usize) -> Result<()> {
        self.drop_from(a, self.node_ip(b))?;
        self.drop_to(a, self.node_ip(b))?;
        self.drop_from(b, self.node_ip(a))?;
        self.drop_to(b, self.node_ip(a))
    }

    /// Node `index` drops each incoming packet with this probability.
    pub fn random_loss(&self, index: usize, probability: f64) -> Result<()> {
        let probability = format!("{probability:.3}");
        self.iptables(
            index,
            &[
                "-A",
                "CHAOS",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ],
        )
    }

    /// Limits what node `index` sends to `kbit` kbit/s (tc tbf on its
    /// veth; this kernel has no netem, tbf is there).
    pub fn limit_bandwidth(&self, index: usize, kbit: u32) -> Result<()> {
        let rate = format!("{kbit}kbit");
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.nodes[index],
                "tc",
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "tbf",
                "rate",
                &rate,
                "burst",
                "32kbit",
                "latency",
                "400ms",
            ],
        )
        .map(drop)
    }

    /// Limits node `index`'s link to `kbit` kbit/s in both directions: tc
    /// tbf on its own veth (what it sends) and on the hub's end of it (what
    /// it receives). The burst is 10 ms worth (at least 32 KiB), so the
    /// limit holds at high rates too. Undone by [`Network::heal`].
    pub fn limit_link(&self, index: usize, kbit: u32) -> Result<()> {
        let rate = format!("{kbit}kbit");
        let burst = format!("{}", (u64::from(kbit) * 1000 / 8 / 100).max(32 * 1024));
        let tbf = |namespace: &str, device: &str| {
            run(
                "ip",
                &[
                    "netns", "exec", namespace, "tc", "qdisc", "replace", "dev", device, "root",
                    "tbf", "rate", &rate, "burst", &burst, "latency", "100ms",
                ],
            )
            .map(drop)
        };
        tbf(&self.nodes[index], "eth0")?;
        tbf(&self.hub, &self.hub_end(index))
    }

    /// The hub's end of node `index`'s veth.
    fn hub_end(&self, index: usize) -> String {
        let short = self
            .host_if
            .strip_suffix('h')
            .expect("host_if is the short name and 'h'");
        format!("{short}{index}b")
    }

    /// Removes every fault rule and bandwidth limit of every node.
    pub fn heal(&self) -> Result<()> {
        for index in 0..self.nodes.len() {
            self.iptables(index, &["-F", "CHAOS"])?;
            // Fails when no limit is set: nothing to undo then.
            let _ = run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &self.nodes[index],
                    "tc",
                    "qdisc",
                    "del",
                    "dev",
                    "eth0",
                    "root",
                ],
            );
            let hub_end = self.hub_end(index);
            let _ = run(
                "ip",
                &[
                    "netns", "exec", &self.hub, "tc", "qdisc", "del", "dev", &hub_end, "root",
                ],
            );
        }
        Ok(())
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace destroys its veth ends and their peers
        // (including the root namespace's end of the client veth).
        for name in self.created.iter().rev() {
            let _ = run("ip", &["netns", "delete", name]);
        }
        let _ = run("ip", &["link", "delete", &self.host_if]);
    }
}

/// A third octet not used by any address of the root namespace.
fn pick_subnet(pid: u32, counter: u32) -> Result<u8> {
    let addresses = run("ip", &["-4", "-o", "addr", "show"])?;
    let start = (pid.wrapping_mul(31).wrapping_add(counter.wrapping_mul(7))) % 250;
    for step in 0..250 {
        let candidate = ((start + step) % 250) as u8 + 1;
        if !addresses.contains(&format!("10.213.{candidate}.")) {
            return Ok(candidate);
        }
    }
    bail!("every 10.213.x.0/24 subnet is in use")
}

/// Removes every namespace this process made (and kills what runs in
/// them). For a signal handler: `Drop` guards do not run when the process
/// is told to die.
pub fn clean_own() {
    let own = format!("{PREFIX}{}-", std::process::id());
    let Ok(list) = run("ip", &["netns", "list"]) else {
        return;
    };
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(&own) {
            if let Ok(pids) = run("ip", &["netns", "pids", name]) {
                for pid in pids.split_whitespace() {
                    let _ = run("kill", &["-KILL", pid]);
                }
            }
            let _ = run("ip", &["netns", "delete", name]);
        }
    }
}

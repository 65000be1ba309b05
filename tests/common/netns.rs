//! Hosts on one machine: each host is a Linux network namespace with one veth link to a bridge
//! in the root namespace, in a private /24 the test owns (10.201.X.0/24; the bridge is .1, the
//! hosts .2, .3, ...). RabbitMQ and PostgreSQL listen on the root namespace's loopback only, so
//! the harness forwards the bridge address's ports 5672 and 5432 to them (a TCP forwarder on a
//! thread of its own, so a busy test runtime cannot stall the cluster's links).
//!
//! Faults: [`Net::isolate`] sets bridge port isolation on two hosts' ports (isolated ports drop
//! every frame between each other, both ways, and still reach everything else);
//! [`Net::link_down`] takes a host off the bridge for good; a forwarder with an [`Impair`]
//! delays what it carries and stalls it as lost segments would (this kernel has no netem).
//!
//! Dropping a [`Net`] kills the processes it started and deletes the namespaces, links and
//! bridge, also when the test panics. It needs root and `ip`; [`Net::new`] says why not, and
//! the test then reports itself skipped.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One host: its namespace, the bridge end of its link, and its address.
pub struct Host {
    pub ns: String,
    pub port: String,
    pub addr: Ipv4Addr,
}

pub struct Net {
    pub bridge: String,
    /// The root namespace's address on the bridge: where hosts reach the broker and database.
    pub gateway: Ipv4Addr,
    pub hosts: Vec<Host>,
    children: Vec<Child>,
    stop_forwarders: Vec<tokio::sync::watch::Sender<bool>>,
    /// Whether this net made its bridge (and so may delete it).
    bridge_made: bool,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn link_exists(name: &str) -> bool {
    Path::new(&format!("/sys/class/net/{name}")).exists()
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether this process runs as root (its effective uid, from /proc).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|v| v.split_whitespace().nth(1));
    euid == Some("0")
}

impl Net {
    /// A bridge and `hosts` hosts on it, or why they cannot be made here (not root, no `ip`).
    /// Once those hold, a failure to make them panics: it is a failure, not a skip.
    pub fn new(tag: &str, hosts: usize) -> Result<Net, String> {
        if !is_root() {
            return Err("needs root (network namespaces)".into());
        }
        if Command::new("ip").arg("-V").output().is_err() {
            return Err("needs iproute2's `ip`".into());
        }
        // A /24 from the test's name and pid; one in use (another test, a leftover) is skipped.
        let seed = tag.bytes().fold(std::process::id(), |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
        let free = |x: &u8| !link_exists(&format!("pqbr{x}")) && !Path::new(&format!("/run/netns/pdq-{x}-0")).exists();
        let third = (0..200)
            .map(|i| 20 + (seed.wrapping_add(i) % 200) as u8)
            .find(free)
            .expect("a free /24 in 10.201.20-219.0 (leftover pqbr* bridges?)");
        let gateway = Ipv4Addr::new(10, 201, third, 1);
        let mut net = Net {
            bridge: format!("pqbr{third}"),
            gateway,
            hosts: Vec::new(),
            children: Vec::new(),
            stop_forwarders: Vec::new(),
            bridge_made: false,
        };
        // From here on a failure is the test's, not a reason to skip it: panic (and clean up).
        let must = |args: &[&str]| ip(args).unwrap_or_else(|e| panic!("making the test's network: {e}"));
        must(&["link", "add", &net.bridge, "type", "bridge"]);
        net.bridge_made = true;
        must(&["addr", "add", &format!("{gateway}/24"), "dev", &net.bridge]);
        must(&["link", "set", &net.bridge, "up"]);
        for i in 0..hosts {
            let host = Host {
                ns: format!("pdq-{third}-{i}"),
                port: format!("pqv{third}h{i}"),
                addr: Ipv4Addr::new(10, 201, third, 2 + i as u8),
            };
            must(&["netns", "add", &host.ns]);
            // Recorded as soon as it exists, so Drop removes a half-made host too.
            net.hosts.push(Host { ns: host.ns.clone(), port: host.port.clone(), addr: host.addr });
            must(&["link", "add", &host.port, "type", "veth", "peer", "name", "eth0", "netns", &host.ns]);
            must(&["link", "set", &host.port, "master", &net.bridge, "up"]);
            must(&["-n", &host.ns, "addr", "add", &format!("{}/24", host.addr), "dev", "eth0"]);
            must(&["-n", &host.ns, "link", "set", "eth0", "up"]);
            must(&["-n", &host.ns, "link", "set", "lo", "up"]);
        }
        Ok(net)
    }

    /// Forwards `gateway:port` to `to` for every host, until the net is dropped.
    pub fn forward(&mut self, ports: &[(u16, SocketAddr)]) {
        self.forward_impaired(ports, None);
    }

    /// [`Net::forward`] through a path that `impair` makes slow and lossy, both ways.
    pub fn forward_impaired(&mut self, ports: &[(u16, SocketAddr)], impair: Option<Impair>) {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let gateway = self.gateway;
        let ports = ports.to_vec();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for (port, to) in ports {
                    let listener = tokio::net::TcpListener::bind((gateway, port)).await.expect("forwarder binds");
                    tasks.push(tokio::spawn(forward(listener, to, impair)));
                }
                ready_tx.send(()).ok();
                let mut rx = rx;
                let _ = rx.changed().await;
                for t in tasks {
                    t.abort();
                }
            });
        });
        ready.recv_timeout(Duration::from_secs(10)).expect("forwarders listening");
        self.stop_forwarders.push(stop);
    }

    /// Starts `program args` on host `i` (`ip netns exec`); killed when the net is dropped.
    /// Returns its index for [`Net::child`].
    pub fn spawn(&mut self, i: usize, program: &str, args: &[String], envs: &[(&str, String)]) -> usize {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.hosts[i].ns]);
        // Where util-linux has setpriv, a rank dies with the test process even when that is
        // killed outright (Drop never runs then).
        if which("setpriv") {
            c.args(["setpriv", "--pdeathsig", "KILL"]);
        }
        c.arg(program).args(args).stdin(Stdio::null());
        c.stdout(Stdio::null()).stderr(Stdio::inherit());
        for (k, v) in envs {
            c.env(k, v);
        }
        // `ip netns exec` (and setpriv) exec the program: the child's pid is the program's.
        self.children.push(c.spawn().expect("ip netns exec runs"));
        self.children.len() - 1
    }

    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// Cuts (or, with `on` false, heals) the link between hosts `a` and `b` only.
    pub fn isolate(&self, a: usize, b: usize, on: bool) {
        let flag = if on { "on" } else { "off" };
        for h in [a, b] {
            ip(&["link", "set", "dev", &self.hosts[h].port, "type", "bridge_slave", "isolated", flag]).unwrap();
        }
    }

    /// Takes host `i` off the network for good: nothing reaches it, nothing leaves it.
    pub fn link_down(&self, i: usize) {
        ip(&["link", "set", "dev", &self.hosts[i].port, "down"]).unwrap();
    }

    /// Whether a TCP connection from host `from` to `to` opens within `within` (bash's /dev/tcp).
    pub fn can_connect(&self, from: usize, to: SocketAddr, within: Duration) -> bool {
        let script = format!("exec 3<>/dev/tcp/{}/{}", to.ip(), to.port());
        let secs = format!("{:.1}", within.as_secs_f64());
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[from].ns, "timeout", &secs, "bash", "-c", &script])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &mut self.children {
            if matches!(c.try_wait(), Ok(None)) {
                c.kill().ok();
                c.wait().ok();
            }
        }
        for stop in self.stop_forwarders.drain(..) {
            let _ = stop.send(true);
        }
        for h in &self.hosts {
            // Deleting the namespace deletes its end of the veth pair, and with it ours.
            let _ = ip(&["netns", "del", &h.ns]);
            if link_exists(&h.port) {
                let _ = ip(&["link", "del", &h.port]);
            }
        }
        if self.bridge_made {
            let _ = ip(&["link", "del", &self.bridge]);
        }
    }
}

/// What a forwarder does to the bytes it carries, each way: holds every chunk `one_way` (so a
/// request and its answer pay twice that), and stalls the stream by `retransmit` for each chunk
/// in which some 1,448-byte segment was lost, with probability `loss` per segment. That is what
/// loss looks like above TCP: the bytes all arrive, in order, late, and what follows a lost
/// segment waits behind it. A proxy cannot drop bytes of a TCP stream without breaking it, and
/// a real lossy link does not reset connections.
#[derive(Debug, Clone, Copy)]
pub struct Impair {
    pub one_way: Duration,
    pub loss: f64,
    pub retransmit: Duration,
}

const SEGMENT: usize = 1448;

async fn forward(listener: tokio::net::TcpListener, to: SocketAddr, impair: Option<Impair>) {
    while let Ok((mut down, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut up) = tokio::net::TcpStream::connect(to).await {
                down.set_nodelay(true).ok();
                up.set_nodelay(true).ok();
                match impair {
                    None => {
                        tokio::io::copy_bidirectional(&mut down, &mut up).await.ok();
                    }
                    Some(impair) => {
                        let (down_r, down_w) = down.into_split();
                        let (up_r, up_w) = up.into_split();
                        tokio::join!(pump(down_r, up_w, impair), pump(up_r, down_w, impair));
                    }
                }
            }
        });
    }
}

/// Carries one direction of a connection through `impair`: a reader stamps each chunk with the
/// time it may leave (never before the chunk ahead of it), a writer sends it then.
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, impair: Impair) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        to.shutdown().await.ok();
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut last = Instant::now();
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let segments = n.div_ceil(SEGMENT) as i32;
            let lost = rand::random::<f64>() < 1.0 - (1.0 - impair.loss).powi(segments);
            let mut due = Instant::now() + impair.one_way;
            if lost {
                due += impair.retransmit;
            }
            last = due.max(last);
            if tx.send((last, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

/// `host:port` of a URL such as `amqp://user:pass@127.0.0.1:5672/%2f`, and the URL with the
/// host replaced by `host`.
pub fn rehost(url: &str, host: Ipv4Addr, default_port: u16) -> (SocketAddr, String) {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let (auth, hostpath) = match rest.rsplit_once('@') {
        Some((a, h)) => (format!("{a}@"), h),
        None => (String::new(), rest),
    };
    let (hostport, path) = hostpath.split_once('/').map_or((hostpath, ""), |(h, p)| (h, p));
    let (h, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().expect("a port")),
        None => (hostport, default_port),
    };
    let h = if h == "localhost" { "127.0.0.1" } else { h };
    let addr = SocketAddr::new(h.parse().expect("the service's URL names an IP address"), port);
    (addr, format!("{scheme}://{auth}{host}:{port}/{path}"))
}

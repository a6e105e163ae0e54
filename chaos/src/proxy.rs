//! The loopback TCP proxy between every pair of devices: the chaos tool's network, where
//! partitions and one-way partitions are made without root (docs/testing.md, "The proxy").
//!
//! Each device announces the address of its own *front* ([`Front`]), a listener on
//! 127.0.0.1 that forwards every accepted connection to the device's current libp2p listen
//! port. Whoever dials a device therefore goes through that device's front, which identifies
//! the dialling device (an [`Identify`] function; in a run, [`crate::procnet`] maps the
//! connection's source port to a daemon's pid) and forwards the bytes of each direction with
//! a pump thread. The [`Mesh`] holds which directed links are cut: a pump whose direction is cut
//! reads and drops the bytes (the connection stays open, as a network that loses packets
//! leaves it), and marks its connection *damaged*; healing closes the damaged connections (their
//! byte streams have holes: as TCP would have given up on them), and the devices dial again.
//! A connection whose dialler cannot be identified is refused (closed at once) and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Tells which device dialled a connection: given the accepted connection's peer address and
/// the front's own address, the device's index, if known.
pub type Identify = Arc<dyn Fn(SocketAddr, SocketAddr) -> Option<usize> + Send + Sync>;

/// How long a front keeps trying to identify a dialler (the socket table is read again).
const IDENTIFY_FOR: Duration = Duration::from_secs(1);
/// How long a front tries to reach its device's listen port.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(2);

/// Counters of the whole mesh.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections forwarded.
    pub forwarded: AtomicU64,
    /// Connections refused because the dialler was not identified.
    pub unidentified: AtomicU64,
    /// Connections refused because the device's listen port did not answer.
    pub upstream_failed: AtomicU64,
    /// Bytes dropped on cut links.
    pub dropped_bytes: AtomicU64,
    /// Damaged connections closed by a heal.
    pub closed_on_heal: AtomicU64,
}

/// One proxied connection, from device `from` to device `to`.
struct Conn {
    from: usize,
    to: usize,
    /// Clones of both sockets, to close them from outside the pumps.
    dialler: TcpStream,
    upstream: TcpStream,
    damaged: AtomicBool,
    /// Pumps still running (the connection is forgotten at 0).
    pumps: AtomicU64,
}

impl Conn {
    fn close(&self) {
        let _ = self.dialler.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct MeshState {
    /// Directed links `(from, to)` whose bytes are dropped.
    cut: BTreeSet<(usize, usize)>,
    conns: Vec<Arc<Conn>>,
}

/// The links between devices: which are cut, and every connection through a front.
#[derive(Clone, Default)]
pub struct Mesh {
    state: Arc<Mutex<MeshState>>,
    stats: Arc<Stats>,
}

impl Mesh {
    /// A mesh with every link up.
    pub fn new() -> Self {
        Self::default()
    }

    /// The mesh's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Drops the bytes `from` sends to `to` from now on (a one-way partition); both
    /// directions make a partition.
    pub fn cut(&self, from: usize, to: usize) {
        self.lock().cut.insert((from, to));
    }

    /// Whether the bytes `from` sends to `to` are dropped.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        self.lock().cut.contains(&(from, to))
    }

    /// The directed links cut now.
    pub fn cut_links(&self) -> Vec<(usize, usize)> {
        self.lock().cut.iter().copied().collect()
    }

    /// Every link up again; the connections that lost bytes are closed.
    pub fn heal_all(&self) {
        let damaged: Vec<Arc<Conn>> = {
            let mut s = self.lock();
            s.cut.clear();
            s.conns.iter().filter(|c| c.damaged.load(Ordering::Acquire)).cloned().collect()
        };
        for c in damaged {
            c.close();
            self.stats.closed_on_heal.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Closes every connection from or to `device` (its front is being replaced).
    pub fn close_device(&self, device: usize) {
        let conns: Vec<Arc<Conn>> = self
            .lock()
            .conns
            .iter()
            .filter(|c| c.from == device || c.to == device)
            .cloned()
            .collect();
        for c in conns {
            c.close();
        }
    }

    /// The open connections per directed pair `(dialler, listener)`.
    pub fn open_connections(&self) -> BTreeMap<(usize, usize), usize> {
        let mut out = BTreeMap::new();
        for c in &self.lock().conns {
            *out.entry((c.from, c.to)).or_insert(0) += 1;
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeshState> {
        // a pump never panics while holding the lock; recover the state if one did
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, conn: &Arc<Conn>) {
        self.lock().conns.retain(|c| !Arc::ptr_eq(c, conn));
    }
}

/// The front of one device: a listener on 127.0.0.1 forwarding to the device's listen port.
pub struct Front {
    device: usize,
    addr: SocketAddr,
    target: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Front {
    /// Starts the front of `device` on a free port of 127.0.0.1, forwarding to
    /// `127.0.0.1:target` (0: nothing yet; connections are refused until [`Front::set_target`]).
    pub fn start(
        device: usize,
        target: u16,
        mesh: Mesh,
        identify: Identify,
    ) -> std::io::Result<Front> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let target = Arc::new(AtomicU16::new(target));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (target, stop) = (target.clone(), stop.clone());
            thread::Builder::new()
                .name(format!("front-{device}"))
                .spawn(move || accept_loop(device, listener, target, stop, mesh, identify))?
        };
        Ok(Front { device, addr, target, stop, acceptor: Some(acceptor) })
    }

    /// The address the device announces.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The device this front leads to.
    pub fn device(&self) -> usize {
        self.device
    }

    /// New connections go to this listen port from now on.
    pub fn set_target(&self, port: u16) {
        self.target.store(port, Ordering::Release);
    }

    /// Stops accepting (the port is closed; open connections are left to their pumps).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    device: usize,
    listener: TcpListener,
    target: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    mesh: Mesh,
    identify: Identify,
) {
    let own = listener.local_addr().ok();
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let (mesh, identify, target) = (mesh.clone(), identify.clone(), target.clone());
                let own = own.unwrap_or(peer);
                // identifying and connecting take time: never hold up the next accept
                let _ =
                    thread::Builder::new().name(format!("front-{device}-conn")).spawn(move || {
                        let port = target.load(Ordering::Acquire);
                        serve(device, stream, peer, own, port, &mesh, &identify)
                    });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

fn serve(
    to: usize,
    dialler: TcpStream,
    peer: SocketAddr,
    own: SocketAddr,
    port: u16,
    mesh: &Mesh,
    identify: &Identify,
) {
    let _ = dialler.set_nonblocking(false);
    let deadline = Instant::now() + IDENTIFY_FOR;
    let from = loop {
        if let Some(d) = identify(peer, own) {
            break d;
        }
        if Instant::now() >= deadline {
            mesh.stats.unidentified.fetch_add(1, Ordering::Relaxed);
            let _ = dialler.shutdown(Shutdown::Both);
            return;
        }
        thread::sleep(Duration::from_millis(10));
    };
    let upstream = match (port != 0)
        .then(|| {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), UPSTREAM_CONNECT)
        })
        .and_then(Result::ok)
    {
        Some(u) => u,
        None => {
            mesh.stats.upstream_failed.fetch_add(1, Ordering::Relaxed);
            let _ = dialler.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = dialler.set_nodelay(true);
    let (Ok(d2), Ok(u2), Ok(d3), Ok(u3)) =
        (dialler.try_clone(), upstream.try_clone(), dialler.try_clone(), upstream.try_clone())
    else {
        let _ = dialler.shutdown(Shutdown::Both);
        let _ = upstream.shutdown(Shutdown::Both);
        return;
    };
    let conn = Arc::new(Conn {
        from,
        to,
        dialler: d3,
        upstream: u3,
        damaged: AtomicBool::new(false),
        pumps: AtomicU64::new(2),
    });
    mesh.lock().conns.push(conn.clone());
    mesh.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    let back = {
        let (mesh, conn) = (mesh.clone(), conn.clone());
        thread::Builder::new()
            .name(format!("pump-{to}-{from}"))
            .spawn(move || pump(u2, d2, to, from, &mesh, &conn))
    };
    if back.is_err() {
        conn.close();
        mesh.forget(&conn);
        return;
    }
    pump(dialler, upstream, from, to, mesh, &conn);
}

/// Copies the bytes `from` sends to `to`, dropping them while that link is cut.
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    from: usize,
    to: usize,
    mesh: &Mesh,
    conn: &Arc<Conn>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if mesh.is_cut(from, to) {
            conn.damaged.store(true, Ordering::Release);
            mesh.stats.dropped_bytes.fetch_add(n as u64, Ordering::Relaxed);
            continue;
        }
        if dst.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    // pass the end on (half-close), and stop reading what nobody will forward
    let _ = dst.shutdown(Shutdown::Write);
    let _ = src.shutdown(Shutdown::Read);
    if conn.pumps.fetch_sub(1, Ordering::AcqRel) == 1 {
        conn.close();
        mesh.forget(conn);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::{BufRead, BufReader};

    use super::*;

    /// An echo server standing in for a device: answers every line with the line.
    fn echo_server() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { return };
                        if writeln!(w, "{line}").is_err() {
                            return;
                        }
                    }
                });
            }
        });
        port
    }

    /// Identifies diallers by their source port, registered by the test after connecting.
    fn by_port() -> (Identify, Arc<Mutex<HashMap<u16, usize>>>) {
        let map = Arc::new(Mutex::new(HashMap::new()));
        let m = map.clone();
        (Arc::new(move |peer: SocketAddr, _| m.lock().unwrap().get(&peer.port()).copied()), map)
    }

    fn dial(front: &Front, from: usize, map: &Arc<Mutex<HashMap<u16, usize>>>) -> TcpStream {
        let s = TcpStream::connect(front.addr()).unwrap();
        map.lock().unwrap().insert(s.local_addr().unwrap().port(), from);
        s.set_read_timeout(Some(Duration::from_millis(400))).unwrap();
        s
    }

    fn round_trip(s: &mut TcpStream, text: &str) -> Option<String> {
        writeln!(s, "{text}").ok()?;
        let mut line = String::new();
        let mut r = BufReader::new(s.try_clone().ok()?);
        match r.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim_end().to_owned()),
            _ => None,
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn forwards_both_directions_when_the_link_is_up() {
        let mesh = Mesh::new();
        let (identify, map) = by_port();
        let front = Front::start(1, echo_server(), mesh.clone(), identify).unwrap();
        let mut s = dial(&front, 0, &map);
        assert_eq!(round_trip(&mut s, "hello").as_deref(), Some("hello"));
        assert_eq!(mesh.open_connections().get(&(0, 1)), Some(&1));
    }

    #[test]
    fn a_cut_link_drops_the_bytes_of_that_direction_only() {
        let mesh = Mesh::new();
        let (identify, map) = by_port();
        let front = Front::start(1, echo_server(), mesh.clone(), identify).unwrap();
        let mut s = dial(&front, 0, &map);
        assert_eq!(round_trip(&mut s, "up").as_deref(), Some("up"));
        // 1 → 0 cut: the request reaches the server, its answer is dropped
        mesh.cut(1, 0);
        assert_eq!(round_trip(&mut s, "lost answer"), None);
        wait_until("dropped bytes", || mesh.stats().dropped_bytes.load(Ordering::Relaxed) > 0);
        // a connection from device 2 is not affected by the cut between 0 and 1
        let mut other = dial(&front, 2, &map);
        assert_eq!(round_trip(&mut other, "fine").as_deref(), Some("fine"));
    }

    #[test]
    fn a_cut_in_the_dialling_direction_drops_requests() {
        let mesh = Mesh::new();
        let (identify, map) = by_port();
        let front = Front::start(1, echo_server(), mesh.clone(), identify).unwrap();
        mesh.cut(0, 1);
        let mut s = dial(&front, 0, &map);
        assert_eq!(round_trip(&mut s, "never arrives"), None);
        // the reverse direction is not cut: device 1's own bytes would pass
        assert!(!mesh.is_cut(1, 0));
    }

    #[test]
    fn healing_closes_damaged_connections_and_new_ones_pass() {
        let mesh = Mesh::new();
        let (identify, map) = by_port();
        let front = Front::start(1, echo_server(), mesh.clone(), identify).unwrap();
        let mut s = dial(&front, 0, &map);
        mesh.cut(0, 1);
        mesh.cut(1, 0);
        assert_eq!(round_trip(&mut s, "dropped"), None);
        mesh.heal_all();
        assert!(mesh.cut_links().is_empty());
        assert_eq!(mesh.stats().closed_on_heal.load(Ordering::Relaxed), 1);
        // the damaged connection is closed: reading gives end of stream
        let mut buf = [0u8; 1];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        let mut fresh = dial(&front, 0, &map);
        assert_eq!(round_trip(&mut fresh, "again").as_deref(), Some("again"));
    }

    #[test]
    fn an_unidentified_dialler_is_refused() {
        let mesh = Mesh::new();
        let identify: Identify = Arc::new(|_, _| None);
        let front = Front::start(1, echo_server(), mesh.clone(), identify).unwrap();
        let mut s = TcpStream::connect(front.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        wait_until("refusal counted", || mesh.stats().unidentified.load(Ordering::Relaxed) == 1);
        assert_eq!(mesh.stats().forwarded.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_new_target_takes_the_next_connections() {
        let mesh = Mesh::new();
        let (identify, map) = by_port();
        let front = Front::start(1, 0, mesh.clone(), identify).unwrap();
        // no target yet: refused
        let mut s = dial(&front, 0, &map);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        front.set_target(echo_server());
        let mut s = dial(&front, 0, &map);
        assert_eq!(round_trip(&mut s, "retargeted").as_deref(), Some("retargeted"));
    }
}

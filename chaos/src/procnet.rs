//! Which process owns a TCP connection: the proxy's way to tell which device dialled it,
//! without root (docs/testing.md, "The proxy").
//!
//! libp2p dials from an ephemeral port, so the source address of an accepted connection says
//! nothing by itself. Linux lists every TCP socket of the network namespace in
//! `/proc/net/tcp` with its local and remote address and its inode; each process's
//! `/proc/<pid>/fd/*` links name the inodes of its sockets (`socket:[INODE]`). The dialling
//! socket of a connection the proxy accepted is the one whose local address is the accepted
//! connection's peer and whose remote address is the proxy's listening address; the device is
//! the daemon whose fds hold that inode. Reading another process's fds needs the same user,
//! which the chaos tool is (it started the daemons).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;

/// Parses `/proc/net/tcp` text and returns the inode of the socket whose local address is
/// `local` and remote address is `remote`, if listed (and not 0: a socket being torn down).
pub fn find_inode(proc_net_tcp: &str, local: SocketAddrV4, remote: SocketAddrV4) -> Option<u64> {
    for line in proc_net_tcp.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 10 {
            continue;
        }
        if parse_addr(fields[1]) != Some(local) || parse_addr(fields[2]) != Some(remote) {
            continue;
        }
        match fields[9].parse::<u64>() {
            Ok(0) | Err(_) => continue,
            Ok(inode) => return Some(inode),
        }
    }
    None
}

/// Parses an address of `/proc/net/tcp`: `0100007F:1F90` is 127.0.0.1:8080 (the address is
/// the 32-bit value as the kernel stores it, printed in the host's byte order; the port is
/// big-endian hex).
pub fn parse_addr(text: &str) -> Option<SocketAddrV4> {
    let (ip, port) = text.split_once(':')?;
    if ip.len() != 8 {
        return None;
    }
    let raw = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddrV4::new(Ipv4Addr::from(raw.to_ne_bytes()), port))
}

/// Whether process `pid` holds socket `inode` among its open files.
pub fn pid_holds_inode(proc_root: &Path, pid: u32, inode: u64) -> bool {
    let wanted = format!("socket:[{inode}]");
    let Ok(entries) = std::fs::read_dir(proc_root.join(pid.to_string()).join("fd")) else {
        return false;
    };
    entries.flatten().any(|e| {
        std::fs::read_link(e.path()).is_ok_and(|target| target.as_os_str() == wanted.as_str())
    })
}

/// The process among `pids` that owns the dialling end of the connection from `dialer` (the
/// accepted connection's peer address) to `listener` (the proxy's address), if any.
pub fn owner_of(dialer: SocketAddrV4, listener: SocketAddrV4, pids: &[u32]) -> Option<u32> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = find_inode(&table, dialer, listener)?;
    pids.iter().copied().find(|&pid| pid_holds_inode(Path::new("/proc"), pid, inode))
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:C350 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:C351 0100007F:1F90 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0000000000000000
";

    fn addr(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn parses_a_loopback_address() {
        assert_eq!(parse_addr("0100007F:1F90"), Some(addr(8080)));
        assert_eq!(parse_addr("garbage"), None);
    }

    #[test]
    fn finds_the_dialling_socket_by_both_ends() {
        assert_eq!(find_inode(TABLE, addr(50000), addr(8080)), Some(2222));
        // the same local port towards another address is another socket
        assert_eq!(find_inode(TABLE, addr(50000), addr(8081)), None);
    }

    #[test]
    fn a_socket_without_inode_is_not_found() {
        // TIME_WAIT sockets are listed with inode 0: nobody owns them any more
        assert_eq!(find_inode(TABLE, addr(50001), addr(8080)), None);
    }

    #[test]
    fn finds_this_process_as_the_owner_of_its_own_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, peer) = listener.accept().unwrap();
        let std::net::SocketAddr::V4(peer) = peer else { panic!("ipv4 expected") };
        let std::net::SocketAddr::V4(local) = listener.local_addr().unwrap() else {
            panic!("ipv4 expected")
        };
        assert_eq!(
            peer,
            match client.local_addr().unwrap() {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("{other}"),
            }
        );
        let me = std::process::id();
        assert_eq!(owner_of(peer, local, &[1, me]), Some(me));
        // the accepting end is another socket: not the dialler
        assert_eq!(owner_of(local, peer, &[]), None);
    }
}

//! Who listens on which TCP port of this machine: the owners (uids) of every
//! listening socket, read in one go. The kernel's socket diagnostics
//! (`NETLINK_SOCK_DIAG`, asked for listening sockets only) walk just the
//! listening table, a few dozen sockets; `/proc/net/tcp*` walks every socket
//! of the machine (thousands in `TIME_WAIT` under load) and is only the
//! fallback where netlink is refused.

use std::collections::HashMap;
use std::io;

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_sock_diag::{
    SockDiagMessage,
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

/// Port → the uids of the TCP sockets listening there (any local address,
/// IPv4 and IPv6).
pub(super) type Owners = HashMap<u16, Vec<u32>>;

/// Every listening TCP socket's port and owner.
pub(super) fn read() -> Owners {
    match read_netlink() {
        Ok(owners) => owners,
        Err(error) => {
            tracing::debug!(%error, "socket diagnostics refused, reading /proc/net/tcp*");
            read_proc()
        }
    }
}

fn read_netlink() -> io::Result<Owners> {
    let mut owners = Owners::new();
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut buf = vec![0u8; 32 * 1024];
    for (family, id) in [
        (AF_INET, SocketId::new_v4()),
        (AF_INET6, SocketId::new_v6()),
    ] {
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut request = NetlinkMessage::new(
            header,
            SockDiagMessage::InetRequest(InetRequest {
                family,
                protocol: IPPROTO_TCP,
                extensions: ExtensionFlags::empty(),
                states: StateFlags::LISTEN,
                socket_id: id,
            })
            .into(),
        );
        request.finalize();
        let mut out = vec![0u8; request.buffer_len()];
        request.serialize(&mut out);
        socket.send(&out, 0)?;
        'dump: loop {
            let size = socket.recv(&mut &mut buf[..], 0)?;
            let mut offset = 0;
            while offset < size {
                let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buf[offset..size])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = message.header.length as usize;
                match message.payload {
                    NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                        owners
                            .entry(response.header.socket_id.source_port)
                            .or_default()
                            .push(response.header.uid);
                    }
                    NetlinkPayload::Done(_) => break 'dump,
                    NetlinkPayload::Error(e) => {
                        return Err(io::Error::other(format!("sock_diag: {e:?}")));
                    }
                    _ => {}
                }
                if length == 0 {
                    break;
                }
                offset += length;
            }
        }
    }
    Ok(owners)
}

fn read_proc() -> Owners {
    let mut owners = Owners::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address rem_address st ... uid: st 0A is LISTEN.
            if cols.len() > 7
                && cols[3] == "0A"
                && let Some((_, port)) = cols[1].rsplit_once(':')
                && let Ok(port) = u16::from_str_radix(port, 16)
                && let Ok(uid) = cols[7].parse()
            {
                owners.entry(port).or_default().push(uid);
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(read: fn() -> Owners) {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0").ok();
        let me = rustix::process::geteuid().as_raw();
        let port = v4.local_addr().unwrap().port();
        // A connected socket on the same machine is not a listener.
        let client = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let owners = read();
        assert_eq!(owners.get(&port), Some(&vec![me]));
        let client_port = client.local_addr().unwrap().port();
        assert_eq!(owners.get(&client_port), None);
        if let Some(v6) = &v6 {
            let port6 = v6.local_addr().unwrap().port();
            assert_eq!(read().get(&port6), Some(&vec![me]));
        }
        drop(v4);
        assert_eq!(read().get(&port), None);
    }

    #[test]
    fn netlink_finds_listeners_with_their_owner() {
        check(|| read_netlink().unwrap());
    }

    #[test]
    fn proc_finds_listeners_with_their_owner() {
        check(read_proc);
    }
}

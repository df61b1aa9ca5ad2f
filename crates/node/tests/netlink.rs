//! The netlink connector transport against a fake peer: another process's
//! socket in the device-mapper group. (The real kernel is the qemu lab's.)
//! Where the machine's kernel has no connector, or the test has no
//! privilege to join the group, it says so and checks only that the error
//! names the cause.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use netlink_sys::{Socket, SocketAddr};
use node::netlink::{CN_IDX_DM, NETLINK_CONNECTOR, NetlinkTransport, OpenError};
use node::transport::Transport;

#[tokio::test]
async fn the_connector_transport_joins_the_dm_group_and_drops_what_is_not_from_the_kernel() {
    let transport = match NetlinkTransport::open(std::path::Path::new("/proc/self/exe")) {
        Ok(t) => t,
        Err(e @ (OpenError::NoConnector(_) | OpenError::NotPermitted(_))) => {
            eprintln!("no connector here: {e}");
            assert!(e.to_string().contains("CONFIG_CONNECTOR") || e.to_string().contains("CAP_NET_ADMIN"));
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // A witness in the same group sees what the group gets.
    let mut witness = Socket::new(NETLINK_CONNECTOR).unwrap();
    witness.bind(&SocketAddr::new(0, 0)).unwrap();
    witness.add_membership(CN_IDX_DM).unwrap();
    witness.set_non_blocking(true).unwrap();
    // The fake peer sends a well-formed request to the group, as only the
    // kernel should.
    let uuid = wire::Uuid::new("LVM-forged").unwrap();
    let forged = wire::encode_request(wire::Luid(1), &uuid, wire::Seq(1), &wire::Request::Dtr).unwrap();
    let mut peer = Socket::new(NETLINK_CONNECTOR).unwrap();
    peer.bind(&SocketAddr::new(0, 0)).unwrap();
    peer.send_to(&forged, &SocketAddr::new(0, 1 << (CN_IDX_DM - 1)), 0).unwrap();
    // The group got it...
    let mut seen = None;
    for _ in 0..100 {
        let mut buf = Vec::with_capacity(65536);
        if let Ok((_, from)) = witness.recv_from(&mut buf, 0) {
            seen = Some((buf, from.port_number()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (bytes, port) = seen.expect("the forged request reached the group");
    assert_ne!(port, 0, "it came from a process, not the kernel");
    assert_eq!(&bytes[..], &forged[..]);
    // ...and the transport did not take it.
    let heard = tokio::time::timeout(Duration::from_millis(500), transport.recv()).await;
    assert!(heard.is_err(), "the transport passed on a request that was not from the kernel: {heard:?}");
}

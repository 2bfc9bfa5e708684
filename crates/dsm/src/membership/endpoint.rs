//! Conversions between socket addresses and the wire's [`Endpoint`].

use std::net::{IpAddr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};

use dsm_wire::Endpoint;
use dsm_wire::msg::membership::transports;

use crate::{Error, Result};

/// The wire form of `addr`, offering `offered` transports.
pub(crate) fn to_endpoint(addr: SocketAddr, offered: u8) -> Endpoint {
    let ip = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    Endpoint {
        ip: ip.octets(),
        port: addr.port(),
        transports: offered | transports::TCP,
    }
}

/// The socket address of `endpoint` (IPv4-mapped addresses become IPv4).
pub(crate) fn to_socket_addr(endpoint: &Endpoint) -> SocketAddr {
    let v6 = Ipv6Addr::from(endpoint.ip);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, endpoint.port)
}

/// Resolves `host:port` to its first address.
pub(crate) fn resolve(address: &str) -> Result<SocketAddr> {
    address
        .to_socket_addrs()
        .map_err(|e| Error::io(format!("resolve coordinator {address}"), e))?
        .next()
        .ok_or_else(|| Error::Config(format!("coordinator {address} resolves to no address")))
}

/// The local address peers can reach this node at: the source address the kernel picks for
/// traffic to the coordinator (no packet is sent; a UDP `connect` only chooses a route).
pub(crate) fn local_ip_towards(coordinator: SocketAddr) -> Result<IpAddr> {
    let unspecified: SocketAddr = if coordinator.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let probe = UdpSocket::bind(unspecified).map_err(|e| Error::io("bind route probe", e))?;
    probe
        .connect(coordinator)
        .map_err(|e| Error::io(format!("route to coordinator {coordinator}"), e))?;
    Ok(probe
        .local_addr()
        .map_err(|e| Error::io("route probe address", e))?
        .ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_round_trip_v4_and_v6() {
        for text in ["127.0.0.1:7470", "[::1]:9", "10.1.2.3:65535"] {
            let addr: SocketAddr = text.parse().unwrap();
            let e = to_endpoint(addr, 0);
            assert_eq!(e.transports, transports::TCP);
            assert_eq!(to_socket_addr(&e), addr);
        }
    }

    #[test]
    fn loopback_routes_to_loopback() {
        let ip = local_ip_towards("127.0.0.1:1".parse().unwrap()).unwrap();
        assert!(ip.is_loopback());
    }
}

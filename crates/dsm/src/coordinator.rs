//! [`free_coordinator_address`]: a loopback address for a cluster's coordinator on this host,
//! for launchers (the benchmarks, the tests, a program's own). `dsm-run` compiles this file
//! in (`#[path]`): the launcher does not link the library. Only `std` here.

use std::net::TcpListener;

/// Ports below this are left to services.
const FIRST: u32 = 10_000;

/// A loopback address whose port is free now and lies below the kernel's ephemeral range
/// (`ip_local_port_range`), for a coordinator that rank 0 binds a moment later. A port from
/// `bind(0)` lies inside that range, where any outgoing connection on the host (a cluster's
/// own mesh, say) may take it first: rank 0 then fails with "Address already in use". Falls
/// back to `bind(0)` when the range leaves no room below it.
pub fn free_coordinator_address() -> std::io::Result<String> {
    let low = ephemeral_low().unwrap_or(32_768);
    if low > FIRST + 100 {
        let span = low - FIRST;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let start = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
        for i in 0..256u32 {
            let port = FIRST + start.wrapping_add(i.wrapping_mul(7_919)) % span;
            let Ok(port) = u16::try_from(port) else {
                continue;
            };
            if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
                return Ok(listener.local_addr()?.to_string());
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.to_string())
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> Option<u32> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_address_is_loopback_free_and_below_the_ephemeral_range() {
        let address = free_coordinator_address().unwrap();
        let port: u32 = address.rsplit(':').next().unwrap().parse().unwrap();
        let low = ephemeral_low().unwrap_or(32_768);
        assert!(address.starts_with("127.0.0.1:"), "{address}");
        if low > FIRST + 100 {
            assert!((FIRST..low).contains(&port), "{port} not below {low}");
        }
        // Not bound again here: other processes pick ports in the same range meanwhile.
    }
}

//! Decisions the path and drop programs make, as plain functions over the bytes of an IP
//! header, so they are unit-tested on the host with real packets. No side effects.

/// An IPv4 or IPv6 address as the maps key it: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodAddr {
    pub octets: [u8; 16],
}

impl PodAddr {
    /// The IPv4-mapped form of `a.b.c.d`.
    pub const fn v4(o: [u8; 4]) -> PodAddr {
        PodAddr {
            octets: [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, o[0], o[1], o[2], o[3],
            ],
        }
    }
}

/// How many header bytes the programs copy out of a packet: an IPv6 header, and more than
/// an IPv4 header without options.
pub const HEADER_BYTES: usize = 40;

/// Source, destination and length of one IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpHeader {
    pub src: PodAddr,
    pub dst: PodAddr,
    /// The packet's length by its own header (IPv4 total length, IPv6 40 + payload length),
    /// so bytes compare across hooks whatever link-layer header the skb still carries.
    pub len: u32,
}

/// Parses the IP header at the start of `h` (the skb's network header). `None` for anything
/// that is not IPv4 or IPv6.
#[inline(always)]
pub fn parse_ip(h: &[u8; HEADER_BYTES]) -> Option<IpHeader> {
    match h[0] >> 4 {
        4 => Some(IpHeader {
            src: PodAddr::v4([h[12], h[13], h[14], h[15]]),
            dst: PodAddr::v4([h[16], h[17], h[18], h[19]]),
            len: u16::from_be_bytes([h[2], h[3]]) as u32,
        }),
        6 => {
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            let mut i = 0;
            while i < 16 {
                src[i] = h[8 + i];
                dst[i] = h[24 + i];
                i += 1;
            }
            Some(IpHeader {
                src: PodAddr { octets: src },
                dst: PodAddr { octets: dst },
                len: 40 + u16::from_be_bytes([h[4], h[5]]) as u32,
            })
        }
        _ => None,
    }
}

/// Which way a packet goes relative to a pod.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ToPod = 0,
    FromPod = 1,
}

impl TryFrom<u8> for Direction {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            0 => Ok(Direction::ToPod),
            1 => Ok(Direction::FromPod),
            other => Err(other),
        }
    }
}

/// Where a drop happened, by the network namespace of the skb's device.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetnsRole {
    /// The node's own namespace (where sgpath runs).
    Node = 1,
    /// A pod's namespace, the far end of a host veth.
    Pod = 2,
}

impl TryFrom<u8> for NetnsRole {
    type Error = u8;
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(NetnsRole::Node),
            2 => Ok(NetnsRole::Pod),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pad(bytes: &[u8]) -> [u8; HEADER_BYTES] {
        let mut h = [0u8; HEADER_BYTES];
        h[..bytes.len()].copy_from_slice(bytes);
        h
    }

    #[test]
    fn parses_a_real_ipv4_udp_header() {
        // 192.168.3.219 -> 169.254.20.10, UDP, total length 92 (captured with tcpdump -xx).
        let h = pad(&[
            0x45, 0x00, 0x00, 0x5c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 192, 168, 3,
            219, 169, 254, 20, 10, 0xd3, 0x3f, 0x00, 0x35,
        ]);
        let ip = parse_ip(&h).unwrap();
        assert_eq!(ip.src, PodAddr::v4([192, 168, 3, 219]));
        assert_eq!(ip.dst, PodAddr::v4([169, 254, 20, 10]));
        assert_eq!(ip.len, 92);
    }

    #[test]
    fn parses_an_ipv6_header() {
        let mut b = vec![0x60, 0, 0, 0, 0x00, 0x10, 17, 64];
        let src: [u8; 16] = [0x20, 0x01, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let dst: [u8; 16] = [0xfd, 0, 0xe, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23];
        b.extend(src);
        b.extend(dst);
        let ip = parse_ip(&pad(&b)).unwrap();
        assert_eq!(ip.src.octets, src);
        assert_eq!(ip.dst.octets, dst);
        assert_eq!(ip.len, 56);
    }

    #[test]
    fn ignores_what_is_not_ip() {
        // An ARP request's first bytes (hardware type 1).
        assert_eq!(parse_ip(&pad(&[0x00, 0x01, 0x08, 0x00, 6, 4])), None);
    }
}

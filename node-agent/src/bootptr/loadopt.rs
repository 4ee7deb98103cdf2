//! EFI_LOAD_OPTION and device-path encoding/decoding (UEFI spec 3.1.3 and
//! 10.3): the content of `Boot####` variables.

use thiserror::Error;

/// `LOAD_OPTION_ACTIVE`: the firmware may boot this entry.
pub const LOAD_OPTION_ACTIVE: u32 = 1;

/// Device path type: hardware.
pub const DP_HARDWARE: u8 = 1;
/// Device path type: messaging (network, USB, ...).
pub const DP_MESSAGING: u8 = 3;
/// Device path type: end of path.
pub const DP_END: u8 = 0x7f;
/// End subtype: end of the entire path.
pub const DP_END_ENTIRE: u8 = 0xff;
/// Messaging subtype: MAC address.
pub const MSG_MAC: u8 = 0x0b;
/// Messaging subtype: IPv4.
pub const MSG_IPV4: u8 = 0x0c;
/// Messaging subtype: IPv6.
pub const MSG_IPV6: u8 = 0x0d;
/// Messaging subtype: URI (HTTP boot).
pub const MSG_URI: u8 = 0x18;

/// Why bytes are not a valid `EFI_LOAD_OPTION`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the fixed header.
    #[error("load option shorter than its header")]
    Short,
    /// The description is not NUL-terminated UCS-2.
    #[error("description is not NUL-terminated UCS-2")]
    Description,
    /// The FilePathList length runs past the variable.
    #[error("file path list length {0} exceeds the option")]
    PathLength(usize),
    /// A device-path node's length is invalid; carries its offset.
    #[error("device path node at offset {0} is malformed")]
    Node(usize),
    /// The path has no End node.
    #[error("device path does not end with an End node")]
    NoEnd,
}

/// One device-path node: type, subtype and the payload after the 4-byte header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpNode {
    /// Device path type (`DP_*`).
    pub typ: u8,
    /// Device path subtype (`MSG_*`, ...).
    pub sub: u8,
    /// Payload after the 4-byte node header.
    pub data: Vec<u8>,
}

impl DpNode {
    /// The End-of-entire-path node that terminates a path.
    pub fn end() -> DpNode {
        DpNode {
            typ: DP_END,
            sub: DP_END_ENTIRE,
            data: vec![],
        }
    }

    /// MAC address node (32-byte padded address + IfType 1 = Ethernet).
    pub fn mac(mac: [u8; 6]) -> DpNode {
        let mut data = vec![0u8; 33];
        data[..6].copy_from_slice(&mac);
        data[32] = 1;
        DpNode {
            typ: DP_MESSAGING,
            sub: MSG_MAC,
            data,
        }
    }

    /// IPv4 node, all zero (DHCP), exactly as edk2's PxeBcDxe creates it:
    /// Local(4) Remote(4) LocalPort(2) RemotePort(2) Protocol(2) Static(1)
    /// Gateway(4) SubnetMask(4), all zero. The firmware matches load options
    /// byte for byte against its handles' paths, so nothing may differ.
    pub fn ipv4_dhcp() -> DpNode {
        let data = vec![0u8; 23];
        DpNode {
            typ: DP_MESSAGING,
            sub: MSG_IPV4,
            data,
        }
    }

    /// URI node holding `uri` (HTTP boot).
    pub fn uri(uri: &str) -> DpNode {
        DpNode {
            typ: DP_MESSAGING,
            sub: MSG_URI,
            data: uri.as_bytes().to_vec(),
        }
    }

    /// Whether this is the End-of-entire-path node.
    pub fn is_end(&self) -> bool {
        self.typ == DP_END && self.sub == DP_END_ENTIRE
    }

    /// The MAC of a MAC node (first 6 bytes: Ethernet).
    pub fn mac_addr(&self) -> Option<[u8; 6]> {
        (self.typ == DP_MESSAGING && self.sub == MSG_MAC && self.data.len() >= 6)
            .then(|| self.data[..6].try_into().unwrap_or([0; 6]))
    }
}

/// Encodes a device path (adds the End node if missing).
pub fn encode_path(nodes: &[DpNode]) -> Vec<u8> {
    let mut out = Vec::new();
    for n in nodes {
        out.push(n.typ);
        out.push(n.sub);
        out.extend_from_slice(&((n.data.len() + 4) as u16).to_le_bytes());
        out.extend_from_slice(&n.data);
    }
    if !nodes.last().is_some_and(DpNode::is_end) {
        out.extend_from_slice(&[DP_END, DP_END_ENTIRE, 4, 0]);
    }
    out
}

/// Decodes the first device path instance (up to and including End-Entire).
pub fn decode_path(b: &[u8]) -> Result<Vec<DpNode>, DecodeError> {
    let mut nodes = Vec::new();
    let mut i = 0;
    while i + 4 <= b.len() {
        let len = u16::from_le_bytes([b[i + 2], b[i + 3]]) as usize;
        if len < 4 || i + len > b.len() {
            return Err(DecodeError::Node(i));
        }
        let n = DpNode {
            typ: b[i],
            sub: b[i + 1],
            data: b[i + 4..i + len].to_vec(),
        };
        i += len;
        let end = n.is_end();
        nodes.push(n);
        if end {
            return Ok(nodes);
        }
    }
    Err(DecodeError::NoEnd)
}

/// A decoded `Boot####` variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// `LOAD_OPTION_*` bits.
    pub attributes: u32,
    /// Name shown in the firmware boot menu.
    pub description: String,
    /// The raw FilePathList (may hold several instances).
    pub file_path: Vec<u8>,
    /// Bytes after the path, passed to the boot application.
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// An active option named `description` booting `path`, without optional data.
    pub fn new(description: &str, path: &[DpNode]) -> LoadOption {
        LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: description.to_string(),
            file_path: encode_path(path),
            optional_data: vec![],
        }
    }

    /// Decodes the content of a `Boot####` variable.
    pub fn decode(b: &[u8]) -> Result<LoadOption, DecodeError> {
        if b.len() < 6 {
            return Err(DecodeError::Short);
        }
        let attributes = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let fpl = u16::from_le_bytes([b[4], b[5]]) as usize;
        let mut i = 6;
        let mut units = Vec::new();
        loop {
            if i + 2 > b.len() {
                return Err(DecodeError::Description);
            }
            let u = u16::from_le_bytes([b[i], b[i + 1]]);
            i += 2;
            if u == 0 {
                break;
            }
            units.push(u);
        }
        let description = String::from_utf16_lossy(&units);
        if i + fpl > b.len() {
            return Err(DecodeError::PathLength(fpl));
        }
        let file_path = b[i..i + fpl].to_vec();
        decode_path(&file_path)?;
        Ok(LoadOption {
            attributes,
            description,
            file_path,
            optional_data: b[i + fpl..].to_vec(),
        })
    }

    /// Encodes as the content of a `Boot####` variable.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.attributes.to_le_bytes());
        out.extend_from_slice(&(self.file_path.len() as u16).to_le_bytes());
        for u in self.description.encode_utf16() {
            out.extend_from_slice(&u.to_le_bytes());
        }
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.file_path);
        out.extend_from_slice(&self.optional_data);
        out
    }

    /// Nodes of the first path instance (empty if it does not decode).
    pub fn nodes(&self) -> Vec<DpNode> {
        decode_path(&self.file_path).unwrap_or_default()
    }

    /// Whether the firmware may boot this option.
    pub fn is_active(&self) -> bool {
        self.attributes & LOAD_OPTION_ACTIVE != 0
    }

    /// MAC in the device path, if this is a network option.
    pub fn mac(&self) -> Option<[u8; 6]> {
        self.nodes().iter().find_map(DpNode::mac_addr)
    }

    fn has(&self, sub: u8) -> bool {
        self.nodes()
            .iter()
            .any(|n| n.typ == DP_MESSAGING && n.sub == sub)
    }

    /// Network option kind, judged from the device path then the description.
    pub fn network_kind(&self) -> Option<NetKind> {
        let d = self.description.to_ascii_uppercase();
        if self.has(MSG_URI) || d.contains("HTTP") {
            Some(NetKind::Http)
        } else if self.has(MSG_IPV6) || d.contains("IPV6") {
            Some(NetKind::PxeV6)
        } else if self.has(MSG_IPV4)
            || self.has(MSG_MAC)
            || d.contains("PXE")
            || d.contains("NETWORK")
        {
            Some(NetKind::PxeV4)
        } else {
            None
        }
    }
}

/// Network boot flavours, best first for our server (PXE over IPv4 then HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NetKind {
    /// PXE over IPv4.
    PxeV4,
    /// UEFI HTTP boot.
    Http,
    /// PXE over IPv6.
    PxeV6,
}

/// Parses `aa:bb:cc:dd:ee:ff` (or dash-separated) into six octets.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let v: Vec<u8> = s
        .split([':', '-'])
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .ok()?;
    v.try_into().ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// OVMF's "UEFI PXEv4 (MAC:525400123456)" for a virtio NIC at PCI 00:03.0.
    pub fn ovmf_pxe4() -> Vec<u8> {
        let mut path = vec![
            // ACPI PNP0A03
            2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0, // PCI dev 3 fn 0
            1, 1, 6, 0, 0, 3,
        ];
        path.extend(encode_path(&[
            DpNode::mac([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            DpNode::ipv4_dhcp(),
        ]));
        let o = LoadOption {
            attributes: 1,
            description: "UEFI PXEv4 (MAC:525400123456)".into(),
            file_path: path,
            optional_data: b"N\xac\x08\x81\x11\x9f\x59\x4d\x85\x0e\xe2\x1a\x52\x2c\x59\xb2"
                .to_vec(),
        };
        o.encode()
    }

    #[test]
    fn round_trip_firmware_option() {
        let raw = ovmf_pxe4();
        let o = LoadOption::decode(&raw).unwrap();
        assert_eq!(o.description, "UEFI PXEv4 (MAC:525400123456)");
        assert_eq!(o.encode(), raw);
        assert_eq!(o.mac(), Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert_eq!(o.network_kind(), Some(NetKind::PxeV4));
        assert_eq!(o.optional_data.len(), 16);
        let nodes = o.nodes();
        assert_eq!(nodes.len(), 5);
        assert_eq!(
            (nodes[2].typ, nodes[2].sub, nodes[2].data.len() + 4),
            (3, 0x0b, 37)
        );
        assert_eq!(
            (nodes[3].typ, nodes[3].sub, nodes[3].data.len() + 4),
            (3, 0x0c, 27)
        );
        assert!(nodes[4].is_end());
    }

    #[test]
    fn encodes_exact_bytes() {
        let o = LoadOption::new("A", &[DpNode::uri("http://x/")]);
        let b = o.encode();
        assert_eq!(
            b,
            [
                1, 0, 0, 0, // attributes
                17, 0, // file path list: 4+9 URI + 4 End
                b'A', 0, 0, 0, // "A\0"
                3, 0x18, 13, 0, b'h', b't', b't', b'p', b':', b'/', b'/', b'x', b'/', //
                0x7f, 0xff, 4, 0
            ]
        );
        assert_eq!(LoadOption::decode(&b).unwrap(), o);
        assert_eq!(o.network_kind(), Some(NetKind::Http));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(LoadOption::decode(&[1, 0, 0]), Err(DecodeError::Short));
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 4, 0, b'A', 0]),
            Err(DecodeError::Description)
        );
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 8, 0, 0, 0, 0x7f, 0xff, 4, 0]),
            Err(DecodeError::PathLength(8))
        );
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 4, 0, 0, 0, 3, 0x0b, 2, 0]),
            Err(DecodeError::Node(0))
        );
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 4, 0, 0, 0, 1, 1, 4, 0]),
            Err(DecodeError::NoEnd)
        );
        // Fuzz-ish: every prefix of a valid option decodes or errors, never panics.
        let raw = ovmf_pxe4();
        for n in 0..raw.len() {
            let _ = LoadOption::decode(&raw[..n]);
        }
    }

    #[test]
    fn mac_parse() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:ef"),
            Some([0x52, 0x54, 0, 0xab, 0xcd, 0xef])
        );
        assert_eq!(parse_mac("52:54:00"), None);
    }
}

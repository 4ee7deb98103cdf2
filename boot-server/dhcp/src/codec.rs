//! Guarded DHCPv4 codec: validates the fixed header and every option TLV before
//! handing the packet to dhcproto (whose decoder debug-asserts on some malformed
//! lengths), and encodes replies (verbatim option 82 echo, minimum BOOTP size).

use dhcproto::v4::{Message, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// Fixed BOOTP header length (op .. file).
const HEADER_LEN: usize = 236;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Largest datagram we accept (jumbo frames included).
const MAX_PACKET: usize = 65_507;
/// Replies are padded to at least this size (old PXE ROMs drop shorter ones).
const MIN_REPLY: usize = 300;

/// Why a packet was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the BOOTP header plus magic cookie; carries the length.
    #[error("packet truncated: {0} bytes")]
    Truncated(usize),
    /// Longer than any DHCP packet this server accepts; carries the length.
    #[error("packet too large: {0} bytes")]
    TooLarge(usize),
    /// The options area does not start with the DHCP magic cookie.
    #[error("bad magic cookie")]
    BadMagic,
    /// `hlen` is larger than the 16-byte `chaddr` field.
    #[error("bad hardware address length {0}")]
    BadHlen(u8),
    /// An option's length runs past the end of the packet.
    #[error("option {code} overruns the packet at offset {offset}")]
    OptionOverrun {
        /// The option's code.
        code: u8,
        /// Where in the packet the option starts.
        offset: usize,
    },
    /// An option's length is invalid for its code.
    #[error("option {code} has invalid length {len}")]
    BadOptionLength {
        /// The option's code.
        code: u8,
        /// The length it claimed.
        len: usize,
    },
    /// An option's value could not be decoded.
    #[error("option {0} could not be decoded")]
    BadOption(u8),
    /// The DHCP codec refused the packet; its message.
    #[error("codec error: {0}")]
    Codec(String),
}

/// Options kept raw from the wire (for verbatim echo).
#[derive(Debug, Default, Clone)]
pub(crate) struct RawOpts {
    /// Option 82 payload (concatenated).
    pub relay_agent: Option<Vec<u8>>,
    /// Option 175 present (iPXE encapsulated options).
    pub has_175: bool,
    /// Option 175 payload.
    pub ipxe_175: Option<Vec<u8>>,
}

/// Length rule dhcproto relies on for an option code.
fn length_ok(code: u8, len: usize) -> bool {
    match code {
        // single IPv4 address (read_ipv4 rejects other lengths)
        1 | 16 | 28 | 32 | 50 | 54 | 118 | 150 => len == 4,
        // u32 / i32 values; 152..=155 debug_assert len == 4
        2 | 24 | 35 | 38 | 51 | 58 | 59 | 91 | 106 | 152..=155 => len == 4,
        // u16 values
        13 | 22 | 26 | 57 => len == 2,
        // option 93 is a list of u16
        93 => len >= 2 && len.is_multiple_of(2),
        // u8 / bool values
        19 | 20 | 23 | 27 | 29 | 30 | 31 | 34 | 36 | 37 | 39 | 46 | 52 | 53 | 116 | 156 | 157 => {
            len == 1
        }
        // lists of IPv4 addresses
        3..=11 | 41 | 42 | 44 | 45 | 48 | 49 | 65 | 68..=76 | 89 | 92 => len.is_multiple_of(4),
        // lists of IPv4 pairs
        21 | 33 => len.is_multiple_of(8),
        // rapid commit: debug_assert len == 0
        80 => len == 0,
        // client FQDN: flags + 2 rcodes (len - 3)
        81 => len >= 3,
        // client network interface: debug_assert len == 3
        94 => len == 3,
        // BLQ status code: len - 1
        151 => len >= 1,
        _ => true,
    }
}

/// Option codes dhcproto decodes as UTF-8 strings.
fn is_string(code: u8) -> bool {
    matches!(
        code,
        12 | 14 | 15 | 17 | 18 | 40 | 47 | 56 | 62 | 64 | 100 | 101 | 114 | 151
    )
}

/// One TLV run (consecutive same-code options concatenated, RFC 3396).
struct Run {
    code: u8,
    data: Vec<u8>,
}

/// Walk the option area, checking every TLV lies inside the packet.
fn walk_options(packet: &[u8]) -> Result<Vec<Run>, DecodeError> {
    let mut runs: Vec<Run> = Vec::new();
    let mut i = HEADER_LEN + 4;
    let mut prev_code: Option<u8> = None;
    while i < packet.len() {
        let code = packet[i];
        match code {
            0 => {
                prev_code = None;
                i += 1;
            }
            255 => break,
            _ => {
                let len = *packet
                    .get(i + 1)
                    .ok_or(DecodeError::OptionOverrun { code, offset: i })?
                    as usize;
                let end = i + 2 + len;
                if end > packet.len() {
                    return Err(DecodeError::OptionOverrun { code, offset: i });
                }
                let data = &packet[i + 2..end];
                match runs.last_mut() {
                    Some(last) if prev_code == Some(code) => last.data.extend_from_slice(data),
                    _ => runs.push(Run {
                        code,
                        data: data.to_vec(),
                    }),
                }
                prev_code = Some(code);
                i = end;
            }
        }
    }
    Ok(runs)
}

/// Validate, then decode with dhcproto. Also returns the raw options we echo.
pub(crate) fn decode_full(packet: &[u8]) -> Result<(Message, RawOpts), DecodeError> {
    if packet.len() < HEADER_LEN + 4 {
        return Err(DecodeError::Truncated(packet.len()));
    }
    if packet.len() > MAX_PACKET {
        return Err(DecodeError::TooLarge(packet.len()));
    }
    if packet[HEADER_LEN..HEADER_LEN + 4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let hlen = packet[2];
    if hlen > 16 {
        return Err(DecodeError::BadHlen(hlen));
    }
    let runs = walk_options(packet)?;
    let mut raw = RawOpts::default();
    for run in &runs {
        if !length_ok(run.code, run.data.len()) {
            return Err(DecodeError::BadOptionLength {
                code: run.code,
                len: run.data.len(),
            });
        }
        if is_string(run.code) {
            let body = if run.code == 151 {
                &run.data[1..]
            } else {
                &run.data[..]
            };
            if std::str::from_utf8(body).is_err() {
                return Err(DecodeError::BadOption(run.code));
            }
        }
        match run.code {
            82 => raw.relay_agent = Some(run.data.clone()),
            175 => {
                raw.has_175 = true;
                raw.ipxe_175 = Some(run.data.clone());
            }
            _ => {}
        }
    }
    let msg = Message::decode(&mut Decoder::new(packet))
        .map_err(|e| DecodeError::Codec(e.to_string()))?;
    // dhcproto silently stops at the first option it cannot decode: make sure
    // every option we saw made it through.
    for run in &runs {
        if msg.opts().get(OptionCode::from(run.code)).is_none() {
            return Err(DecodeError::BadOption(run.code));
        }
    }
    Ok((msg, raw))
}

/// Public guarded decode (used by the fuzz target and the server).
pub fn decode(packet: &[u8]) -> Result<Message, DecodeError> {
    decode_full(packet).map(|(m, _)| m)
}

/// Encode a reply; `relay_agent` (option 82 payload) is appended verbatim as
/// the last option. The result is padded to the BOOTP minimum of 300 bytes.
pub(crate) fn encode_reply(msg: &Message, relay_agent: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    // The fixed header by hand (dhcproto's byte-wise fill of sname/file is
    // the single biggest cost of its encoder), options through dhcproto.
    let mut buf = Vec::with_capacity(576);
    buf.push(u8::from(msg.opcode()));
    buf.push(u8::from(msg.htype()));
    buf.push(msg.hlen());
    buf.push(msg.hops());
    buf.extend_from_slice(&msg.xid().to_be_bytes());
    buf.extend_from_slice(&msg.secs().to_be_bytes());
    buf.extend_from_slice(&u16::from(msg.flags()).to_be_bytes());
    for a in [msg.ciaddr(), msg.yiaddr(), msg.siaddr(), msg.giaddr()] {
        buf.extend_from_slice(&a.octets());
    }
    let mut chaddr = [0u8; 16];
    let c = msg.chaddr();
    chaddr[..c.len().min(16)].copy_from_slice(&c[..c.len().min(16)]);
    buf.extend_from_slice(&chaddr);
    for (field, size) in [(msg.sname(), 64usize), (msg.fname(), 128usize)] {
        let start = buf.len();
        if let Some(v) = field {
            buf.extend_from_slice(&v[..v.len().min(size)]);
        }
        buf.resize(start + size, 0);
    }
    buf.extend_from_slice(&MAGIC);
    // (dhcproto's Encoder writes from offset 0 of its buffer: use a fresh one)
    let mut opts = Vec::with_capacity(256);
    msg.opts()
        .encode(&mut Encoder::new(&mut opts))
        .map_err(|e| anyhow::anyhow!("encoding DHCP reply options: {e}"))?;
    buf.extend_from_slice(&opts);
    if let Some(ra) = relay_agent {
        if buf.last() == Some(&255) {
            buf.pop();
        }
        for chunk in ra.chunks(255) {
            buf.push(82);
            buf.push(chunk.len() as u8);
            buf.extend_from_slice(chunk);
        }
        if ra.is_empty() {
            buf.extend_from_slice(&[82, 0]);
        }
        buf.push(255);
    }
    if buf.len() < MIN_REPLY {
        buf.resize(MIN_REPLY, 0);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{DhcpOption, Flags, MessageType, Opcode};
    use std::net::Ipv4Addr;

    #[test]
    fn hand_encoded_header_matches_dhcproto() {
        let mut m = Message::new_with_id(
            0xdead_beef,
            Ipv4Addr::new(1, 2, 3, 4),
            Ipv4Addr::new(5, 6, 7, 8),
            Ipv4Addr::new(9, 10, 11, 12),
            Ipv4Addr::new(13, 14, 15, 16),
            &[1, 2, 3, 4, 5, 6],
        );
        m.set_opcode(Opcode::BootReply)
            .set_secs(7)
            .set_hops(2)
            .set_flags(Flags::default().set_broadcast())
            .set_fname(b"undionly.kpxe\0")
            .set_sname(b"srv\0");
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Offer));
        m.opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
        let ours = encode_reply(&m, None).unwrap();
        let theirs = m.to_vec().unwrap();
        assert_eq!(&ours[..theirs.len()], &theirs[..]);
        assert!(ours[theirs.len()..].iter().all(|b| *b == 0));
        assert_eq!(decode(&ours).unwrap(), m);
        // option 82 appended verbatim before END
        let with82 = encode_reply(&m, Some(&[1, 2, b'a', b'b'])).unwrap();
        let end = theirs.len() - 1;
        assert_eq!(&with82[end..end + 7], &[82, 4, 1, 2, b'a', b'b', 255]);
    }
}

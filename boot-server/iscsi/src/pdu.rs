//! iSCSI PDU codec (RFC 7143 §11): the 48-byte Basic Header Segment, additional header
//! segments, the padded data segment, optional CRC32C header/data digests, and the
//! `key=value\0` text format used by Login and Text PDUs. Every parser here is
//! panic-free on any input (fuzzed by `boot-server/fuzz/fuzz_targets/iscsi_pdu.rs`).

use std::io::{self, Read};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// Largest data segment we ever accept (a peer declaring more is cut off).
pub const MAX_DATA_SEGMENT: usize = 16 * 1024 * 1024;
/// "No task tag" / "no target transfer tag".
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Initiator opcodes.
pub mod op {
    /// NOP-Out.
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// Task Management Function request.
    pub const TASK_MGMT: u8 = 0x02;
    /// Login request.
    pub const LOGIN: u8 = 0x03;
    /// Text request.
    pub const TEXT: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout request.
    pub const LOGOUT: u8 = 0x06;
    /// SNACK request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In.
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESP: u8 = 0x21;
    /// Task Management Function response.
    pub const TASK_MGMT_RESP: u8 = 0x22;
    /// Login response.
    pub const LOGIN_RESP: u8 = 0x23;
    /// Text response.
    pub const TEXT_RESP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout response.
    pub const LOGOUT_RESP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Why a PDU could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    /// The socket failed or closed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// Fewer bytes than the header announces.
    #[error("truncated PDU")]
    Truncated,
    /// The data segment is larger than allowed.
    #[error("data segment of {0} bytes exceeds the limit of {1}")]
    TooLong(usize, usize),
    /// Header digest mismatch (the connection must be dropped).
    #[error("header digest mismatch")]
    HeaderDigest,
    /// Data digest mismatch (the PDU is rejected and discarded).
    #[error("data digest mismatch")]
    DataDigest(Box<Pdu>),
    /// Malformed text segment.
    #[error("bad text: {0}")]
    Text(&'static str),
}

/// Which digests are in use on a connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C after the header (BHS + AHS).
    pub header: bool,
    /// CRC32C after the (padded) data segment.
    pub data: bool,
}

/// One PDU: header, additional header segments and (unpadded) data segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pdu {
    /// The Basic Header Segment.
    pub bhs: [u8; BHS_LEN],
    /// Additional header segments (a multiple of 4 bytes).
    pub ahs: Vec<u8>,
    /// The data segment without padding.
    pub data: Vec<u8>,
}

/// iSCSI's CRC32C as sent on the wire (little-endian byte order, RFC 7143 §13.1).
pub fn crc32c(parts: &[&[u8]]) -> [u8; 4] {
    let mut c = 0u32;
    for p in parts {
        c = crc32c::crc32c_append(c, p);
    }
    c.to_le_bytes()
}

fn pad4(n: usize) -> usize {
    (4 - n % 4) % 4
}

impl Pdu {
    /// A PDU with `opcode` (byte 0) and an otherwise zero header.
    pub fn new(opcode: u8) -> Self {
        let mut bhs = [0u8; BHS_LEN];
        bhs[0] = opcode & 0x3f;
        Pdu {
            bhs,
            ahs: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The opcode (without the immediate bit).
    pub fn opcode(&self) -> u8 {
        self.bhs[0] & 0x3f
    }

    /// The immediate-delivery bit.
    pub fn immediate(&self) -> bool {
        self.bhs[0] & 0x40 != 0
    }

    /// The Final bit (byte 1, bit 7).
    pub fn final_bit(&self) -> bool {
        self.bhs[1] & 0x80 != 0
    }

    /// Big-endian u32 of the header at `off` (must be ≤ 44).
    pub fn u32_at(&self, off: usize) -> u32 {
        u32::from_be_bytes([
            self.bhs[off],
            self.bhs[off + 1],
            self.bhs[off + 2],
            self.bhs[off + 3],
        ])
    }

    /// Sets a big-endian u32 in the header at `off` (must be ≤ 44).
    pub fn set_u32(&mut self, off: usize, v: u32) {
        self.bhs[off..off + 4].copy_from_slice(&v.to_be_bytes());
    }

    /// The 8-byte LUN field (bytes 8..16).
    pub fn lun_field(&self) -> [u8; 8] {
        let mut l = [0u8; 8];
        l.copy_from_slice(&self.bhs[8..16]);
        l
    }

    /// Initiator Task Tag.
    pub fn itt(&self) -> u32 {
        self.u32_at(16)
    }

    /// TotalAHSLength in bytes, as announced by the header.
    pub fn ahs_len_field(&self) -> usize {
        usize::from(self.bhs[4]) * 4
    }

    /// DataSegmentLength as announced by the header.
    pub fn data_len_field(&self) -> usize {
        (usize::from(self.bhs[5]) << 16)
            | (usize::from(self.bhs[6]) << 8)
            | usize::from(self.bhs[7])
    }

    /// Serialises the PDU (lengths are filled in from `ahs` and `data`).
    pub fn encode(&self, digests: Digests) -> Vec<u8> {
        let mut bhs = self.bhs;
        bhs[4] = (self.ahs.len() / 4) as u8;
        let dl = self.data.len() as u32;
        bhs[5..8].copy_from_slice(&dl.to_be_bytes()[1..]);
        let mut v = Vec::with_capacity(BHS_LEN + self.ahs.len() + self.data.len() + 12);
        v.extend_from_slice(&bhs);
        v.extend_from_slice(&self.ahs);
        if digests.header {
            let d = crc32c(&[&v]);
            v.extend_from_slice(&d);
        }
        if !self.data.is_empty() {
            v.extend_from_slice(&self.data);
            let pad = pad4(self.data.len());
            v.extend_from_slice(&[0u8; 3][..pad]);
            if digests.data {
                let d = crc32c(&[&self.data, &[0u8; 3][..pad]]);
                v.extend_from_slice(&d);
            }
        }
        v
    }
}

/// Bytes that follow the BHS for a header announcing `ahs` AHS bytes and `data` data bytes.
fn rest_len(ahs: usize, data: usize, d: Digests) -> usize {
    let mut n = ahs;
    if d.header {
        n += 4;
    }
    if data > 0 {
        n += data + pad4(data);
        if d.data {
            n += 4;
        }
    }
    n
}

/// Splits the bytes after the BHS into AHS and data, checking digests.
fn finish(bhs: [u8; BHS_LEN], rest: &[u8], d: Digests) -> Result<Pdu, PduError> {
    let mut p = Pdu {
        bhs,
        ahs: Vec::new(),
        data: Vec::new(),
    };
    let ahs_len = p.ahs_len_field();
    let data_len = p.data_len_field();
    if rest.len() < rest_len(ahs_len, data_len, d) {
        return Err(PduError::Truncated);
    }
    let ahs = &rest[..ahs_len];
    let mut pos = ahs_len;
    if d.header {
        if crc32c(&[&bhs, ahs]) != rest[pos..pos + 4] {
            return Err(PduError::HeaderDigest);
        }
        pos += 4;
    }
    p.ahs = ahs.to_vec();
    if data_len > 0 {
        let padded = data_len + pad4(data_len);
        let seg = &rest[pos..pos + padded];
        p.data = seg[..data_len].to_vec();
        pos += padded;
        if d.data && crc32c(&[seg]) != rest[pos..pos + 4] {
            return Err(PduError::DataDigest(Box::new(p)));
        }
    }
    Ok(p)
}

/// Parses one PDU from the front of `buf`; returns it and the bytes it used.
/// `max_data` bounds the data segment.
pub fn parse_pdu(buf: &[u8], d: Digests, max_data: usize) -> Result<(Pdu, usize), PduError> {
    if buf.len() < BHS_LEN {
        return Err(PduError::Truncated);
    }
    let mut bhs = [0u8; BHS_LEN];
    bhs.copy_from_slice(&buf[..BHS_LEN]);
    let probe = Pdu {
        bhs,
        ahs: Vec::new(),
        data: Vec::new(),
    };
    let data_len = probe.data_len_field();
    if data_len > max_data {
        return Err(PduError::TooLong(data_len, max_data));
    }
    let n = rest_len(probe.ahs_len_field(), data_len, d);
    let rest = buf.get(BHS_LEN..BHS_LEN + n).ok_or(PduError::Truncated)?;
    Ok((finish(bhs, rest, d)?, BHS_LEN + n))
}

/// Reads one PDU from a blocking stream. `max_data` bounds the data segment (our
/// MaxRecvDataSegmentLength, or more during login).
pub fn read_pdu(r: &mut impl Read, d: Digests, max_data: usize) -> Result<Pdu, PduError> {
    let mut bhs = [0u8; BHS_LEN];
    r.read_exact(&mut bhs)?;
    let probe = Pdu {
        bhs,
        ahs: Vec::new(),
        data: Vec::new(),
    };
    let data_len = probe.data_len_field();
    if data_len > max_data {
        return Err(PduError::TooLong(data_len, max_data));
    }
    let mut rest = vec![0u8; rest_len(probe.ahs_len_field(), data_len, d)];
    r.read_exact(&mut rest)?;
    finish(bhs, &rest, d)
}

/// Parses a text segment (`key=value` pairs, each ended by NUL) in order. A final
/// pair without its NUL is accepted. Keys must be non-empty and at most 63 bytes.
pub fn parse_text(data: &[u8]) -> Result<Vec<(String, String)>, PduError> {
    let mut out = Vec::new();
    let data = data.strip_suffix(&[0]).unwrap_or(data);
    if data.is_empty() {
        return Ok(out);
    }
    for item in data.split(|b| *b == 0) {
        if item.is_empty() {
            // Padding NULs between pairs are tolerated.
            continue;
        }
        let eq = item
            .iter()
            .position(|b| *b == b'=')
            .ok_or(PduError::Text("pair without '='"))?;
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        if k.is_empty() || k.len() > 63 {
            return Err(PduError::Text("bad key length"));
        }
        if v.len() > 8192 {
            return Err(PduError::Text("value too long"));
        }
        let k = std::str::from_utf8(k).map_err(|_| PduError::Text("key not UTF-8"))?;
        let v = std::str::from_utf8(v).map_err(|_| PduError::Text("value not UTF-8"))?;
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Encodes `key=value\0` pairs.
pub fn encode_text(pairs: &[(String, String)]) -> Vec<u8> {
    let mut v = Vec::new();
    for (k, val) in pairs {
        v.extend_from_slice(k.as_bytes());
        v.push(b'=');
        v.extend_from_slice(val.as_bytes());
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_rfc_example() {
        // RFC 3720 B.4: 32 bytes of zeros -> aa 36 91 8a.
        assert_eq!(crc32c(&[&[0u8; 32]]), [0xaa, 0x36, 0x91, 0x8a]);
    }

    #[test]
    fn roundtrip_with_digests() {
        let mut p = Pdu::new(op::TEXT_RESP);
        p.bhs[1] = 0x80;
        p.set_u32(16, 7);
        p.data = b"a=b\0".to_vec();
        p.data.push(b'c');
        for d in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let wire = p.encode(d);
            assert_eq!(wire.len() % 4, 0);
            let (q, n) = parse_pdu(&wire, d, 1 << 20).unwrap();
            assert_eq!(n, wire.len());
            assert_eq!(q.data, p.data);
            assert_eq!(q.itt(), 7);
            let q2 = read_pdu(&mut &wire[..], d, 1 << 20).unwrap();
            assert_eq!(q2.data, p.data);
        }
        let mut wire = p.encode(Digests {
            header: true,
            data: false,
        });
        wire[10] ^= 1;
        assert!(matches!(
            parse_pdu(
                &wire,
                Digests {
                    header: true,
                    data: false
                },
                1 << 20
            ),
            Err(PduError::HeaderDigest)
        ));
    }

    #[test]
    fn text_parsing() {
        let t = parse_text(b"A=1\0B=x=y\0\0C=\0").unwrap();
        assert_eq!(
            t,
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "x=y".into()),
                ("C".into(), "".into())
            ]
        );
        assert!(parse_text(b"novalue\0").is_err());
        assert!(parse_text(b"=v\0").is_err());
        assert_eq!(parse_text(b"").unwrap(), vec![]);
    }

    #[test]
    fn oversized_and_truncated() {
        let mut b = [0u8; 48];
        b[5] = 0xff;
        assert!(matches!(
            parse_pdu(&b, Digests::default(), 1024),
            Err(PduError::TooLong(..))
        ));
        b[5] = 0;
        b[7] = 5;
        assert!(matches!(
            parse_pdu(&b, Digests::default(), 1024),
            Err(PduError::Truncated)
        ));
    }
}

//! TFTP wire format: parsing of client packets (RRQ/WRQ with RFC 2347 options,
//! ACK, ERROR) and encoding of server packets (DATA, OACK, ERROR).
//!
//! Everything here is pure and panic-free on arbitrary input; it is the code the
//! `tftp_request` fuzz target exercises.

use thiserror::Error;

/// RFC 1350 opcodes.
pub mod opcode {
    /// Read request.
    pub const RRQ: u16 = 1;
    /// Write request (always refused: the server is read-only).
    pub const WRQ: u16 = 2;
    /// A block of file data.
    pub const DATA: u16 = 3;
    /// Acknowledgement of a block.
    pub const ACK: u16 = 4;
    /// Error report; ends the transfer.
    pub const ERROR: u16 = 5;
    /// RFC 2347 option acknowledgement.
    pub const OACK: u16 = 6;
}

/// RFC 1350 / 2347 error codes.
pub mod error_code {
    /// Not defined; see the message.
    pub const NOT_DEFINED: u16 = 0;
    /// File not found.
    pub const FILE_NOT_FOUND: u16 = 1;
    /// Access violation.
    pub const ACCESS_VIOLATION: u16 = 2;
    /// Disk full or allocation exceeded.
    pub const DISK_FULL: u16 = 3;
    /// Illegal TFTP operation.
    pub const ILLEGAL_OPERATION: u16 = 4;
    /// Unknown transfer ID (packet from a stranger port).
    pub const UNKNOWN_TID: u16 = 5;
    /// RFC 2347: the client refused the OACK's options.
    pub const OPTION_NEGOTIATION: u16 = 8;
}

/// Smallest block size RFC 2348 allows.
pub const MIN_BLKSIZE: u16 = 8;
/// Largest block size RFC 2348 allows.
pub const MAX_BLKSIZE: u16 = 65464;

/// Read or write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// RRQ: the client reads a file.
    Read,
    /// WRQ: the client wants to write a file.
    Write,
}

/// Transfer mode of a request (RFC 1350 §5), matched case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes sent as they are.
    Octet,
    /// Served with real netascii conversion (LF -> CR LF, CR -> CR NUL).
    Netascii,
    /// Obsolete; always refused with error 4.
    Mail,
}

/// The options of RFC 2347-2349 and 7440 that this server understands.
///
/// A value outside the range its RFC allows is treated as "not requested"
/// (the option is then left out of the OACK, as RFC 2347 permits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestOptions {
    /// RFC 2348, already clamped to at most [`MAX_BLKSIZE`]; `None` if absent or < 8.
    pub blksize: Option<u16>,
    /// RFC 2349 transfer size as sent by the client (0 in a read request).
    pub tsize: Option<u64>,
    /// RFC 2349 retransmit timeout in seconds, 1..=255.
    pub timeout: Option<u8>,
    /// RFC 7440 window size, 1..=65535.
    pub windowsize: Option<u16>,
}

/// A parsed RRQ or WRQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// RRQ or WRQ.
    pub kind: RequestKind,
    /// The file name exactly as sent (validated as UTF-8, not yet resolved).
    pub filename: String,
    /// Transfer mode requested.
    pub mode: Mode,
    /// Options the client asked for.
    pub options: RequestOptions,
}

/// Why a packet was not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Shorter than the smallest request; carries the length.
    #[error("packet too short ({0} bytes)")]
    TooShort(usize),
    /// A valid opcode that is not RRQ/WRQ (e.g. an ACK on the server port).
    #[error("opcode {0} is not a request")]
    NotARequest(u16),
    /// An opcode RFC 1350/2347 does not define.
    #[error("unknown opcode {0}")]
    UnknownOpcode(u16),
    /// A string field runs to the end of the packet without its NUL.
    #[error("field is not NUL-terminated")]
    Unterminated,
    /// A string field is not UTF-8.
    #[error("field is not valid UTF-8")]
    InvalidUtf8,
    /// The file name field is empty.
    #[error("empty file name")]
    EmptyFilename,
    /// A mode other than netascii, octet or mail.
    #[error("unknown transfer mode {0:?}")]
    UnknownMode(String),
    /// An option name comes without its value.
    #[error("option {0:?} has no value")]
    OptionWithoutValue(String),
}

/// Parses a request packet (RRQ or WRQ) as received on the server port.
///
/// Unknown options and options with out-of-range or non-numeric values are
/// ignored (RFC 2347: the server simply does not acknowledge them). When an
/// option appears twice, the first occurrence wins.
pub fn parse_request(packet: &[u8]) -> Result<Request, ParseError> {
    if packet.len() < 2 {
        return Err(ParseError::TooShort(packet.len()));
    }
    let op = u16::from_be_bytes([packet[0], packet[1]]);
    let kind = match op {
        opcode::RRQ => RequestKind::Read,
        opcode::WRQ => RequestKind::Write,
        opcode::DATA | opcode::ACK | opcode::ERROR | opcode::OACK => {
            return Err(ParseError::NotARequest(op))
        }
        other => return Err(ParseError::UnknownOpcode(other)),
    };
    let mut fields = Fields { rest: &packet[2..] };
    let filename = fields.next_str()?.ok_or(ParseError::Unterminated)?;
    if filename.is_empty() {
        return Err(ParseError::EmptyFilename);
    }
    let mode_str = fields.next_str()?.ok_or(ParseError::Unterminated)?;
    let mode = match mode_str.to_ascii_lowercase().as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        "mail" => Mode::Mail,
        _ => return Err(ParseError::UnknownMode(truncate(mode_str))),
    };
    let mut options = RequestOptions::default();
    let mut seen = [false; 4];
    while let Some(name) = fields.next_str()? {
        if name.is_empty() && fields.rest.is_empty() {
            // Some clients pad the request with a trailing NUL.
            break;
        }
        let value = fields
            .next_str()?
            .ok_or_else(|| ParseError::OptionWithoutValue(truncate(name)))?;
        let slot = match name.to_ascii_lowercase().as_str() {
            "blksize" => 0,
            "tsize" => 1,
            "timeout" => 2,
            "windowsize" => 3,
            _ => continue,
        };
        if seen[slot] {
            continue;
        }
        seen[slot] = true;
        let Ok(n) = value.trim().parse::<u64>() else {
            continue;
        };
        match slot {
            0 if n >= u64::from(MIN_BLKSIZE) => {
                options.blksize = Some(n.min(u64::from(MAX_BLKSIZE)) as u16)
            }
            1 => options.tsize = Some(n),
            2 if (1..=255).contains(&n) => options.timeout = Some(n as u8),
            3 if (1..=65535).contains(&n) => options.windowsize = Some(n as u16),
            _ => {}
        }
    }
    Ok(Request {
        kind,
        filename: filename.to_owned(),
        mode,
        options,
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Iterator over NUL-terminated strings.
struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Fields<'a> {
    /// `Ok(None)` at the end of the packet; an error for a trailing
    /// unterminated field or invalid UTF-8.
    fn next_str(&mut self) -> Result<Option<&'a str>, ParseError> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Unterminated)?;
        let field = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        std::str::from_utf8(field)
            .map(Some)
            .map_err(|_| ParseError::InvalidUtf8)
    }
}

/// A packet a client sends during a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientPacket<'a> {
    /// ACK of the given block number.
    Ack(u16),
    /// The client aborts the transfer.
    Error {
        /// The TFTP error code it sent.
        code: u16,
        /// Its error message.
        message: &'a str,
    },
    /// Any other opcode (the transfer ignores it).
    Other(u16),
}

/// Parses a packet received on a transfer socket; `None` if malformed.
pub fn parse_client_packet(packet: &[u8]) -> Option<ClientPacket<'_>> {
    if packet.len() < 4 {
        return None;
    }
    let op = u16::from_be_bytes([packet[0], packet[1]]);
    let arg = u16::from_be_bytes([packet[2], packet[3]]);
    Some(match op {
        opcode::ACK => ClientPacket::Ack(arg),
        opcode::ERROR => {
            let body = &packet[4..];
            let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
            let message = std::str::from_utf8(&body[..end]).unwrap_or("<non-UTF-8 message>");
            ClientPacket::Error { code: arg, message }
        }
        other => ClientPacket::Other(other),
    })
}

/// Encodes an ERROR packet.
pub fn encode_error(code: u16, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + message.len());
    out.extend_from_slice(&opcode::ERROR.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend(message.bytes().filter(|&b| b != 0));
    out.push(0);
    out
}

/// Encodes an OACK with the given (name, value) pairs.
pub fn encode_oack(options: &[(&str, String)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&opcode::OACK.to_be_bytes());
    for (name, value) in options {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Writes a DATA header for `block` into the first 4 bytes of `buf`.
pub fn write_data_header(buf: &mut [u8; 4], block: u16) {
    buf[..2].copy_from_slice(&opcode::DATA.to_be_bytes());
    buf[2..].copy_from_slice(&block.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(parts: &[&str]) -> Vec<u8> {
        let mut p = vec![0, 1];
        for s in parts {
            p.extend_from_slice(s.as_bytes());
            p.push(0);
        }
        p
    }

    #[test]
    fn plain_rrq() {
        let r = parse_request(&rrq(&["undionly.kpxe", "octet"])).unwrap();
        assert_eq!(r.kind, RequestKind::Read);
        assert_eq!(r.filename, "undionly.kpxe");
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options, RequestOptions::default());
    }

    #[test]
    fn ipxe_style_options_case_insensitive() {
        let r = parse_request(&rrq(&[
            "a/b",
            "OCTET",
            "BlkSize",
            "1432",
            "tsize",
            "0",
            "Timeout",
            "3",
            "windowsize",
            "4",
        ]))
        .unwrap();
        assert_eq!(r.mode, Mode::Octet);
        assert_eq!(r.options.blksize, Some(1432));
        assert_eq!(r.options.tsize, Some(0));
        assert_eq!(r.options.timeout, Some(3));
        assert_eq!(r.options.windowsize, Some(4));
    }

    #[test]
    fn out_of_range_options_are_ignored() {
        let r = parse_request(&rrq(&[
            "f",
            "netascii",
            "blksize",
            "7",
            "timeout",
            "0",
            "windowsize",
            "0",
            "tsize",
            "x",
            "foo",
            "bar",
        ]))
        .unwrap();
        assert_eq!(r.mode, Mode::Netascii);
        assert_eq!(r.options, RequestOptions::default());
        let r = parse_request(&rrq(&["f", "octet", "blksize", "70000", "timeout", "256"])).unwrap();
        assert_eq!(r.options.blksize, Some(MAX_BLKSIZE));
        assert_eq!(r.options.timeout, None);
    }

    #[test]
    fn duplicate_option_first_wins() {
        let r = parse_request(&rrq(&["f", "octet", "blksize", "512", "blksize", "1024"])).unwrap();
        assert_eq!(r.options.blksize, Some(512));
    }

    #[test]
    fn wrq_and_mail_parse() {
        let mut p = rrq(&["f", "mail"]);
        p[1] = 2;
        let r = parse_request(&p).unwrap();
        assert_eq!(r.kind, RequestKind::Write);
        assert_eq!(r.mode, Mode::Mail);
    }

    #[test]
    fn malformed_requests() {
        assert_eq!(parse_request(&[]), Err(ParseError::TooShort(0)));
        assert_eq!(parse_request(&[0]), Err(ParseError::TooShort(1)));
        assert_eq!(parse_request(&[0, 1]), Err(ParseError::Unterminated));
        assert_eq!(
            parse_request(&[0, 4, 0, 1]),
            Err(ParseError::NotARequest(4))
        );
        assert_eq!(
            parse_request(&[0, 9, 0, 1]),
            Err(ParseError::UnknownOpcode(9))
        );
        assert_eq!(
            parse_request(b"\x00\x01file"),
            Err(ParseError::Unterminated)
        );
        assert_eq!(
            parse_request(b"\x00\x01file\x00"),
            Err(ParseError::Unterminated)
        );
        assert_eq!(
            parse_request(b"\x00\x01file\x00oct"),
            Err(ParseError::Unterminated)
        );
        assert_eq!(
            parse_request(b"\x00\x01\x00octet\x00"),
            Err(ParseError::EmptyFilename)
        );
        assert_eq!(
            parse_request(b"\x00\x01\xff\xfe\x00octet\x00"),
            Err(ParseError::InvalidUtf8)
        );
        assert!(matches!(
            parse_request(b"\x00\x01f\x00binary\x00"),
            Err(ParseError::UnknownMode(_))
        ));
        assert!(matches!(
            parse_request(b"\x00\x01f\x00octet\x00blksize\x00"),
            Err(ParseError::OptionWithoutValue(_))
        ));
        assert!(matches!(
            parse_request(b"\x00\x01f\x00octet\x00blksize\x00512"),
            Err(ParseError::Unterminated)
        ));
    }

    #[test]
    fn trailing_padding_nul_accepted() {
        let r = parse_request(b"\x00\x01f\x00octet\x00\x00").unwrap();
        assert_eq!(r.filename, "f");
    }

    #[test]
    fn client_packets_and_encoders() {
        assert_eq!(
            parse_client_packet(&[0, 4, 1, 2]),
            Some(ClientPacket::Ack(0x0102))
        );
        assert_eq!(parse_client_packet(&[0, 4, 1]), None);
        assert_eq!(
            parse_client_packet(b"\x00\x05\x00\x08User aborted\x00"),
            Some(ClientPacket::Error {
                code: 8,
                message: "User aborted"
            })
        );
        assert_eq!(
            parse_client_packet(b"\x00\x05\x00\x00"),
            Some(ClientPacket::Error {
                code: 0,
                message: ""
            })
        );
        assert_eq!(encode_error(1, "nope"), b"\x00\x05\x00\x01nope\x00");
        assert_eq!(
            encode_oack(&[("tsize", "42".into()), ("blksize", "1468".into())]),
            b"\x00\x06tsize\x0042\x00blksize\x001468\x00"
        );
        let mut h = [0u8; 4];
        write_data_header(&mut h, 65535);
        assert_eq!(h, [0, 3, 0xff, 0xff]);
    }
}

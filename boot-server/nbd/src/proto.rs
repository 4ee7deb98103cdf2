//! NBD wire format: constants from `doc/proto.md` and pure, panic-free parsers for the
//! bytes a client sends (request headers, option payloads). No I/O happens here, so the
//! fuzz target can drive every parser directly.

use thiserror::Error;

pub use boot_proto::nbd::*;

/// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
/// The client does not want holes punched (WRITE_ZEROES).
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
/// READ must come back as one chunk (don't fragment).
pub const CMD_FLAG_DF: u16 = 1 << 2;
/// BLOCK_STATUS: one extent is enough.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
/// WRITE_ZEROES must fail fast rather than be slow.
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;
/// Every command flag this server understands; others get EINVAL.
pub const CMD_FLAGS_KNOWN: u16 =
    CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;

/// Structured reply chunk types and flags.
pub const REPLY_FLAG_DONE: u16 = 1;
/// Structured chunk without payload.
pub const REPLY_TYPE_NONE: u16 = 0;
/// Structured chunk: data at an offset.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Structured chunk: a hole (zeroes) at an offset.
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
/// Structured chunk: block status extents.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// Structured chunk: an error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

/// `base:allocation` status bits.
pub const STATE_HOLE: u32 = 1;
/// `base:allocation`: the range reads as zeroes.
pub const STATE_ZERO: u32 = 2;

/// Errno values on the wire.
pub const EPERM: u32 = 1;
/// I/O error.
pub const EIO: u32 = 5;
/// Out of memory.
pub const ENOMEM: u32 = 12;
/// Invalid argument.
pub const EINVAL: u32 = 22;
/// No space left on the device.
pub const ENOSPC: u32 = 28;
/// Value too large (request past the end of the export).
pub const EOVERFLOW: u32 = 75;
/// Operation not supported.
pub const ENOTSUP: u32 = 95;
/// The server is shutting down.
pub const ESHUTDOWN: u32 = 108;

/// Size of a request header on the wire.
pub const REQUEST_LEN: usize = 28;
/// Longest string (export name, context name) the spec allows.
pub const MAX_STRING: usize = 4096;
/// The one meta context this server offers.
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Why client bytes were rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the structure needs.
    #[error("short buffer: need {need} bytes, got {got}")]
    Short {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        got: usize,
    },
    /// A request header without the request magic.
    #[error("bad request magic {0:#x}")]
    BadMagic(u32),
    /// A string longer than [`MAX_STRING`].
    #[error("string longer than {MAX_STRING} bytes")]
    StringTooLong,
    /// A string that is not UTF-8 or contains NUL.
    #[error("string is not valid UTF-8 or contains NUL")]
    BadString,
    /// Bytes left over after an option's payload.
    #[error("trailing bytes in option payload")]
    Trailing,
    /// An option that takes no payload came with one.
    #[error("option payload must be empty")]
    NotEmpty,
}

/// Transmission-phase command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// NBD_CMD_READ.
    Read,
    /// NBD_CMD_WRITE.
    Write,
    /// NBD_CMD_DISC: the client disconnects.
    Disc,
    /// NBD_CMD_FLUSH.
    Flush,
    /// NBD_CMD_TRIM.
    Trim,
    /// NBD_CMD_CACHE.
    Cache,
    /// NBD_CMD_WRITE_ZEROES.
    WriteZeroes,
    /// NBD_CMD_BLOCK_STATUS.
    BlockStatus,
    /// Any other command number.
    Unknown(u16),
}

impl Command {
    /// The command with wire number `t`.
    pub fn from_wire(t: u16) -> Self {
        match t {
            0 => Command::Read,
            1 => Command::Write,
            2 => Command::Disc,
            3 => Command::Flush,
            4 => Command::Trim,
            5 => Command::Cache,
            6 => Command::WriteZeroes,
            7 => Command::BlockStatus,
            other => Command::Unknown(other),
        }
    }
}

/// A parsed request header (the WRITE payload follows it on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// NBD_CMD_FLAG_* bits.
    pub flags: u16,
    /// What to do.
    pub command: Command,
    /// Opaque value echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Length in bytes.
    pub length: u32,
}

impl Request {
    /// Whether the client asked for force unit access (write through before replying).
    pub fn fua(&self) -> bool {
        self.flags & CMD_FLAG_FUA != 0
    }
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, ParseError> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(ParseError::Short {
            need: at + 2,
            got: b.len(),
        })
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, ParseError> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ParseError::Short {
            need: at + 4,
            got: b.len(),
        })
}

fn be_u64(b: &[u8], at: usize) -> Result<u64, ParseError> {
    let s = b.get(at..at + 8).ok_or(ParseError::Short {
        need: at + 8,
        got: b.len(),
    })?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_be_bytes(a))
}

/// Parses a 28-byte request header. Extra bytes after the header are ignored (they are
/// the WRITE payload, read separately).
pub fn parse_request(buf: &[u8]) -> Result<Request, ParseError> {
    if buf.len() < REQUEST_LEN {
        return Err(ParseError::Short {
            need: REQUEST_LEN,
            got: buf.len(),
        });
    }
    let magic = be_u32(buf, 0)?;
    if magic != REQUEST_MAGIC {
        return Err(ParseError::BadMagic(magic));
    }
    Ok(Request {
        flags: be_u16(buf, 4)?,
        command: Command::from_wire(be_u16(buf, 6)?),
        cookie: be_u64(buf, 8)?,
        offset: be_u64(buf, 16)?,
        length: be_u32(buf, 24)?,
    })
}

/// Reads a string of `len` bytes at `at`, checking the spec's limits.
fn string_at(b: &[u8], at: usize, len: usize) -> Result<String, ParseError> {
    if len > MAX_STRING {
        return Err(ParseError::StringTooLong);
    }
    let end = at.checked_add(len).ok_or(ParseError::StringTooLong)?;
    let s = b.get(at..end).ok_or(ParseError::Short {
        need: end,
        got: b.len(),
    })?;
    if s.contains(&0) {
        return Err(ParseError::BadString);
    }
    String::from_utf8(s.to_vec()).map_err(|_| ParseError::BadString)
}

/// Payload of NBD_OPT_INFO / NBD_OPT_GO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoRequest {
    /// Export name (empty: the default export).
    pub name: String,
    /// NBD_INFO_* items the client asked for.
    pub infos: Vec<u16>,
}

/// Parses `u32 namelen, name, u16 n, n x u16`.
pub fn parse_go(data: &[u8]) -> Result<GoRequest, ParseError> {
    let nlen = be_u32(data, 0)? as usize;
    let name = string_at(data, 4, nlen)?;
    let mut at = 4 + nlen;
    let n = be_u16(data, at)? as usize;
    at += 2;
    let mut infos = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        infos.push(be_u16(data, at)?);
        at += 2;
    }
    if at != data.len() {
        return Err(ParseError::Trailing);
    }
    Ok(GoRequest { name, infos })
}

/// Payload of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    /// Export name the contexts are for.
    pub export: String,
    /// Context queries, e.g. `base:allocation` or `base:`.
    pub queries: Vec<String>,
}

/// Parses `u32 namelen, name, u32 nqueries, nqueries x (u32 len, query)`.
pub fn parse_meta_context(data: &[u8]) -> Result<MetaContextRequest, ParseError> {
    let nlen = be_u32(data, 0)? as usize;
    let export = string_at(data, 4, nlen)?;
    let mut at = 4 + nlen;
    let n = be_u32(data, at)? as usize;
    at += 4;
    let mut queries = Vec::new();
    for _ in 0..n {
        let qlen = be_u32(data, at)? as usize;
        at += 4;
        queries.push(string_at(data, at, qlen)?);
        at += qlen;
    }
    if at != data.len() {
        return Err(ParseError::Trailing);
    }
    Ok(MetaContextRequest { export, queries })
}

/// A client option, decoded from its number and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOption {
    /// NBD_OPT_EXPORT_NAME (old-style: no reply, straight to transmission).
    ExportName(String),
    /// NBD_OPT_ABORT.
    Abort,
    /// NBD_OPT_LIST.
    List,
    /// NBD_OPT_INFO.
    Info(GoRequest),
    /// NBD_OPT_GO.
    Go(GoRequest),
    /// NBD_OPT_STRUCTURED_REPLY.
    StructuredReply,
    /// NBD_OPT_LIST_META_CONTEXT.
    ListMetaContext(MetaContextRequest),
    /// NBD_OPT_SET_META_CONTEXT.
    SetMetaContext(MetaContextRequest),
    /// Any other option number (answered with an error).
    Unsupported(u32),
}

/// Decodes one option. Errors mean "reply NBD_REP_ERR_INVALID" (except EXPORT_NAME,
/// where the only possible answer is to hang up).
pub fn parse_option(opt: u32, data: &[u8]) -> Result<ClientOption, ParseError> {
    let empty = |o: ClientOption| {
        if data.is_empty() {
            Ok(o)
        } else {
            Err(ParseError::NotEmpty)
        }
    };
    match opt {
        OPT_EXPORT_NAME => Ok(ClientOption::ExportName(string_at(data, 0, data.len())?)),
        OPT_ABORT => Ok(ClientOption::Abort),
        OPT_LIST => empty(ClientOption::List),
        OPT_INFO => Ok(ClientOption::Info(parse_go(data)?)),
        OPT_GO => Ok(ClientOption::Go(parse_go(data)?)),
        OPT_STRUCTURED_REPLY => empty(ClientOption::StructuredReply),
        OPT_LIST_META_CONTEXT => Ok(ClientOption::ListMetaContext(parse_meta_context(data)?)),
        OPT_SET_META_CONTEXT => Ok(ClientOption::SetMetaContext(parse_meta_context(data)?)),
        other => Ok(ClientOption::Unsupported(other)),
    }
}

/// Encodes an option reply header + payload.
pub fn option_reply(opt: u32, rtype: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + payload.len());
    v.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    v.extend_from_slice(&opt.to_be_bytes());
    v.extend_from_slice(&rtype.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// Simple reply header (16 bytes).
pub fn simple_reply(error: u32, cookie: u64) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    h[4..8].copy_from_slice(&error.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h
}

/// Structured reply chunk header (20 bytes).
pub fn structured_header(flags: u16, rtype: u16, cookie: u64, len: u32) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&rtype.to_be_bytes());
    h[8..16].copy_from_slice(&cookie.to_be_bytes());
    h[16..20].copy_from_slice(&len.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_roundtrip() {
        let mut b = Vec::new();
        b.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&4096u64.to_be_bytes());
        b.extend_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(r.command, Command::Write);
        assert!(r.fua());
        assert_eq!((r.cookie, r.offset, r.length), (7, 4096, 512));
        assert!(parse_request(&b[..27]).is_err());
        b[0] = 0;
        assert!(matches!(parse_request(&b), Err(ParseError::BadMagic(_))));
    }

    #[test]
    fn go_parsing() {
        let mut b = Vec::new();
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"abc");
        b.extend_from_slice(&1u16.to_be_bytes());
        b.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let g = parse_go(&b).unwrap();
        assert_eq!(g.name, "abc");
        assert_eq!(g.infos, vec![INFO_BLOCK_SIZE]);
        b.push(0);
        assert_eq!(parse_go(&b), Err(ParseError::Trailing));
        let mut huge = Vec::new();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_go(&huge).is_err());
    }

    #[test]
    fn meta_parsing() {
        let mut b = Vec::new();
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&15u32.to_be_bytes());
        b.extend_from_slice(b"base:allocation");
        let m = parse_meta_context(&b).unwrap();
        assert_eq!(m.queries, vec![BASE_ALLOCATION.to_string()]);
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_context(&bad).is_err());
    }
}

//! Userspace NBD handshake (fixed newstyle with NBD_OPT_GO, falling back to
//! NBD_OPT_EXPORT_NAME, plus oldstyle servers). Never negotiates structured
//! replies or extended headers: the socket is handed to the kernel, which
//! only understands simple replies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use thiserror::Error;

pub use boot_proto::nbd::*;
/// Largest option reply we accept (server input is untrusted).
const MAX_REPLY: u32 = 64 * 1024;

/// Why the NBD handshake failed.
#[derive(Debug, Error)]
pub enum HandshakeError {
    /// The connection failed mid-handshake.
    #[error("i/o during NBD handshake: {0}")]
    Io(#[from] std::io::Error),
    /// The server's greeting lacks the NBD magic.
    #[error("not an NBD server (magic {0:#x})")]
    BadMagic(u64),
    /// An option reply lacks the reply magic.
    #[error("bad option reply magic {0:#x}")]
    BadReplyMagic(u64),
    /// An option reply larger than this client accepts.
    #[error("option reply of {0} bytes is too large")]
    TooLarge(u32),
    /// The server refused the export.
    #[error("server refused export {export:?}: error {code:#x} {message}")]
    Refused {
        /// The export asked for.
        export: String,
        /// NBD_REP_ERR_* code.
        code: u32,
        /// The server's message.
        message: String,
    },
    /// GO was acknowledged without NBD_INFO_EXPORT.
    #[error("server acknowledged GO without describing the export")]
    NoExportInfo,
    /// A reply that does not parse; what was wrong.
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
}

/// The outcome: a socket in transmission phase plus what the kernel needs.
#[derive(Debug)]
pub struct Negotiated {
    /// The socket, now in the transmission phase.
    pub stream: TcpStream,
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags (NBD_FLAG_HAS_FLAGS, READ_ONLY, SEND_FLUSH, ...).
    pub flags: u16,
    /// Block size constraints (min, preferred, max) if the server sent them.
    pub block_size: Option<(u32, u32, u32)>,
}

fn rd_u16(s: &mut impl Read) -> std::io::Result<u16> {
    let mut b = [0; 2];
    s.read_exact(&mut b)?;
    Ok(u16::from_be_bytes(b))
}
fn rd_u32(s: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}
fn rd_u64(s: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn send_opt(s: &mut impl Write, opt: u32, data: &[u8]) -> std::io::Result<()> {
    let mut b = Vec::with_capacity(16 + data.len());
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&(data.len() as u32).to_be_bytes());
    b.extend_from_slice(data);
    s.write_all(&b)
}

/// Bytes of an NBD_OPT_GO request asking for the block-size info.
pub fn go_payload(export: &str) -> Vec<u8> {
    let mut d = Vec::new();
    d.extend_from_slice(&(export.len() as u32).to_be_bytes());
    d.extend_from_slice(export.as_bytes());
    d.extend_from_slice(&1u16.to_be_bytes());
    d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    d
}

/// Runs the handshake on a connected stream.
pub fn handshake(mut s: TcpStream, export: &str) -> Result<Negotiated, HandshakeError> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_nodelay(true)?;
    let magic = rd_u64(&mut s)?;
    if magic != NBDMAGIC {
        return Err(HandshakeError::BadMagic(magic));
    }
    let second = rd_u64(&mut s)?;
    if second == OLDSTYLE_MAGIC {
        let size = rd_u64(&mut s)?;
        let flags = rd_u32(&mut s)?;
        let mut zeroes = [0u8; 124];
        s.read_exact(&mut zeroes)?;
        s.set_read_timeout(None)?;
        return Ok(Negotiated {
            stream: s,
            size,
            flags: flags as u16,
            block_size: None,
        });
    }
    if second != IHAVEOPT {
        return Err(HandshakeError::BadMagic(second));
    }
    let server_flags = rd_u16(&mut s)?;
    let client_flags = server_flags & (FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
    s.write_all(&u32::from(client_flags).to_be_bytes())?;
    let no_zeroes = client_flags & FLAG_NO_ZEROES != 0;

    if server_flags & FLAG_FIXED_NEWSTYLE != 0 {
        send_opt(&mut s, OPT_GO, &go_payload(export))?;
        let mut export_info: Option<(u64, u16)> = None;
        let mut block_size = None;
        loop {
            let m = rd_u64(&mut s)?;
            if m != OPT_REPLY_MAGIC {
                return Err(HandshakeError::BadReplyMagic(m));
            }
            let _opt = rd_u32(&mut s)?;
            let typ = rd_u32(&mut s)?;
            let len = rd_u32(&mut s)?;
            if len > MAX_REPLY {
                return Err(HandshakeError::TooLarge(len));
            }
            let mut data = vec![0u8; len as usize];
            s.read_exact(&mut data)?;
            match typ {
                REP_ACK => break,
                REP_INFO => {
                    if data.len() < 2 {
                        return Err(HandshakeError::Malformed("short NBD_REP_INFO"));
                    }
                    let info = u16::from_be_bytes([data[0], data[1]]);
                    match info {
                        INFO_EXPORT if data.len() >= 12 => {
                            let size = u64::from_be_bytes(data[2..10].try_into().unwrap_or([0; 8]));
                            let fl = u16::from_be_bytes([data[10], data[11]]);
                            export_info = Some((size, fl));
                        }
                        INFO_BLOCK_SIZE if data.len() >= 14 => {
                            let g = |i: usize| {
                                u32::from_be_bytes(data[i..i + 4].try_into().unwrap_or([0; 4]))
                            };
                            block_size = Some((g(2), g(6), g(10)));
                        }
                        INFO_EXPORT | INFO_BLOCK_SIZE => {
                            return Err(HandshakeError::Malformed("short info payload"))
                        }
                        _ => {}
                    }
                }
                REP_ERR_UNSUP => {
                    // Pre-GO server: fall through to EXPORT_NAME below.
                    return export_name(s, export, no_zeroes);
                }
                t if t & 0x8000_0000 != 0 => {
                    return Err(HandshakeError::Refused {
                        export: export.to_string(),
                        code: t,
                        message: String::from_utf8_lossy(&data).into_owned(),
                    });
                }
                _ => {} // unknown non-error reply types are ignored per spec
            }
        }
        let (size, flags) = export_info.ok_or(HandshakeError::NoExportInfo)?;
        s.set_read_timeout(None)?;
        return Ok(Negotiated {
            stream: s,
            size,
            flags,
            block_size,
        });
    }
    export_name(s, export, no_zeroes)
}

fn export_name(
    mut s: TcpStream,
    export: &str,
    no_zeroes: bool,
) -> Result<Negotiated, HandshakeError> {
    send_opt(&mut s, OPT_EXPORT_NAME, export.as_bytes())?;
    let size = rd_u64(&mut s).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HandshakeError::Refused {
                export: export.to_string(),
                code: 0,
                message: "server closed the connection on EXPORT_NAME".into(),
            }
        } else {
            e.into()
        }
    })?;
    let flags = rd_u16(&mut s)?;
    if !no_zeroes {
        let mut z = [0u8; 124];
        s.read_exact(&mut z)?;
    }
    s.set_read_timeout(None)?;
    Ok(Negotiated {
        stream: s,
        size,
        flags,
        block_size: None,
    })
}

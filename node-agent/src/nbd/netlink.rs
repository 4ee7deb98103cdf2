//! Minimal generic-netlink client (raw `libc` sockets) for the kernel's
//! "nbd" family: resolve the family id, CONNECT a socket to a device,
//! DISCONNECT, RECONFIGURE with a replacement socket.

use anyhow::{bail, Context, Result};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const CTRL_ATTR_MCAST_GROUPS: u16 = 7;
const CTRL_ATTR_MCAST_GRP_NAME: u16 = 1;
const CTRL_ATTR_MCAST_GRP_ID: u16 = 2;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
/// Multicast group on which the kernel announces dead NBD links.
pub const NBD_MCAST_GROUP: &str = "nbd_mc_group";

/// NBD genl command: connect a device.
pub const NBD_CMD_CONNECT: u8 = 1;
/// NBD genl command: disconnect a device.
pub const NBD_CMD_DISCONNECT: u8 = 2;
/// NBD genl command: hand a device new sockets.
pub const NBD_CMD_RECONFIGURE: u8 = 3;
/// NBD genl notification: a device's connection died.
pub const NBD_CMD_LINK_DEAD: u8 = 4;
/// NBD attribute: device index.
pub const NBD_ATTR_INDEX: u16 = 1;
/// NBD attribute: size in bytes.
pub const NBD_ATTR_SIZE_BYTES: u16 = 2;
/// NBD attribute: block size in bytes.
pub const NBD_ATTR_BLOCK_SIZE_BYTES: u16 = 3;
/// NBD attribute: I/O timeout in seconds.
pub const NBD_ATTR_TIMEOUT: u16 = 4;
/// NBD attribute: transmission flags from the server.
pub const NBD_ATTR_SERVER_FLAGS: u16 = 5;
/// NBD attribute: client flags.
pub const NBD_ATTR_CLIENT_FLAGS: u16 = 6;
/// NBD attribute: nested list of sockets.
pub const NBD_ATTR_SOCKETS: u16 = 7;
/// NBD attribute: seconds to wait for a reconnect after a dead link.
pub const NBD_ATTR_DEAD_CONN_TIMEOUT: u16 = 8;
/// Nested item of `NBD_ATTR_SOCKETS`.
pub const NBD_SOCK_ITEM: u16 = 1;
/// Attribute inside a socket item: the file descriptor.
pub const NBD_SOCK_FD: u16 = 1;
const NBD_GENL_VERSION: u8 = 1;

/// Appends one attribute (header + payload + padding to 4).
pub fn put_attr(buf: &mut Vec<u8>, typ: u16, payload: &[u8]) {
    buf.extend_from_slice(&((payload.len() + 4) as u16).to_ne_bytes());
    buf.extend_from_slice(&typ.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// Appends a nested attribute holding `inner`.
pub fn put_nested(buf: &mut Vec<u8>, typ: u16, inner: &[u8]) {
    put_attr(buf, typ | NLA_F_NESTED, inner);
}

/// Iterates `(type, payload)` over a run of attributes; stops at malformed data.
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let typ = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((typ, &b[4..len]));
        let adv = (len + 3) & !3;
        b = &b[adv.min(b.len())..];
    }
    out
}

/// A NETLINK_GENERIC socket.
pub struct Genl {
    fd: OwnedFd,
    seq: u32,
}

impl Genl {
    /// Opens and binds a generic netlink socket.
    pub fn open() -> Result<Genl> {
        // SAFETY: plain socket(2)/bind(2)/setsockopt(2) with checked results.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error()).context("socket(NETLINK_GENERIC)");
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_nl = std::mem::zeroed();
            sa.nl_family = libc::AF_NETLINK as u16;
            if libc::bind(
                fd.as_raw_fd(),
                &sa as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            ) != 0
            {
                return Err(io::Error::last_os_error()).context("bind netlink");
            }
            let tv = libc::timeval {
                tv_sec: 10,
                tv_usec: 0,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            Ok(Genl { fd, seq: 1 })
        }
    }

    /// Sends one request with ACK and returns the attribute payloads of the
    /// genl replies (after the 4-byte genl header) that precede the ACK.
    pub fn request(
        &mut self,
        family: u16,
        cmd: u8,
        version: u8,
        attrs: &[u8],
    ) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let len = 16 + 4 + attrs.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&family.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&[cmd, version, 0, 0]);
        m.extend_from_slice(attrs);
        // SAFETY: buffer pointer/length are valid for the call.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("netlink send");
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            // SAFETY: recv(2) writes at most `buf.len()` bytes into the live,
            // owned `buf`; `self.fd` is open for the call.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error()).context("netlink recv");
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let mtype = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
                if mlen < 16 || mlen > b.len() {
                    bail!("malformed netlink message");
                }
                let body = &b[16..mlen];
                if mseq == seq {
                    match mtype {
                        NLMSG_ERROR => {
                            let err = body
                                .get(..4)
                                .map(|e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]]))
                                .unwrap_or(-libc::EIO);
                            if err != 0 {
                                return Err(io::Error::from_raw_os_error(-err))
                                    .context(format!("netlink request cmd {cmd} refused"));
                            }
                            return Ok(replies);
                        }
                        NLMSG_DONE => return Ok(replies),
                        _ if body.len() >= 4 => replies.push(body[4..].to_vec()),
                        _ => {}
                    }
                }
                b = &b[((mlen + 3) & !3).min(b.len())..];
            }
        }
    }

    /// Family id and multicast groups `(name, id)` of a genl family.
    pub fn family(&mut self, name: &str) -> Result<(u16, Vec<(String, u32)>)> {
        let mut a = Vec::new();
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        put_attr(&mut a, CTRL_ATTR_FAMILY_NAME, &n);
        let replies = self
            .request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1, &a)
            .with_context(|| format!("resolve genl family {name:?} (module loaded?)"))?;
        let mut id = None;
        let mut groups = Vec::new();
        for r in &replies {
            for (t, p) in attrs(r) {
                if t == CTRL_ATTR_FAMILY_ID && p.len() >= 2 {
                    id = Some(u16::from_ne_bytes([p[0], p[1]]));
                }
                if t == CTRL_ATTR_MCAST_GROUPS {
                    for (_, g) in attrs(p) {
                        let mut gname = None;
                        let mut gid = None;
                        for (gt, gp) in attrs(g) {
                            match gt {
                                CTRL_ATTR_MCAST_GRP_NAME => {
                                    gname = Some(
                                        String::from_utf8_lossy(gp)
                                            .trim_end_matches('\0')
                                            .to_string(),
                                    )
                                }
                                CTRL_ATTR_MCAST_GRP_ID if gp.len() >= 4 => {
                                    gid = Some(u32::from_ne_bytes([gp[0], gp[1], gp[2], gp[3]]))
                                }
                                _ => {}
                            }
                        }
                        if let (Some(n), Some(i)) = (gname, gid) {
                            groups.push((n, i));
                        }
                    }
                }
            }
        }
        Ok((
            id.with_context(|| format!("no family id for {name:?} in reply"))?,
            groups,
        ))
    }

    /// Subscribes this socket to a multicast group.
    pub fn join_group(&self, group: u32) -> Result<()> {
        // SAFETY: setsockopt with a valid u32 option value.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                &group as *const u32 as *const libc::c_void,
                4,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error()).context("NETLINK_ADD_MEMBERSHIP");
        }
        Ok(())
    }

    /// Waits up to the socket's receive timeout for one notification and
    /// returns `(genl cmd, attribute bytes)` of each message received.
    pub fn recv_events(&self, timeout: std::time::Duration) -> Result<Vec<(u8, Vec<u8>)>> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        let mut buf = vec![0u8; 16 * 1024];
        // SAFETY: the option value is a live `timeval` passed with its size,
        // and recv(2) writes at most `buf.len()` bytes into the owned `buf`.
        let n = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
            libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) {
                return Ok(Vec::new());
            }
            return Err(e).context("netlink recv");
        }
        let mut out = Vec::new();
        let mut b = &buf[..n as usize];
        while b.len() >= 20 {
            let mlen = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
            if mlen < 20 || mlen > b.len() {
                break;
            }
            out.push((b[16], b[20..mlen].to_vec()));
            b = &b[((mlen + 3) & !3).min(b.len())..];
        }
        Ok(out)
    }

    /// Numeric id of a generic netlink family, e.g. "nbd".
    pub fn family_id(&mut self, name: &str) -> Result<u16> {
        Ok(self.family(name)?.0)
    }
}

/// Parameters of an NBD_CMD_CONNECT.
#[derive(Debug, Clone)]
pub struct ConnectParams {
    /// Device index to use; `None` lets the kernel pick one.
    pub index: Option<u32>,
    /// Export size in bytes.
    pub size_bytes: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Transmission flags the server sent.
    pub server_flags: u64,
    /// I/O timeout in seconds.
    pub timeout_secs: u64,
    /// Seconds the kernel waits for a reconnect after a dead link.
    pub dead_conn_timeout_secs: u64,
    /// NBD_CFLAG_* bits.
    pub client_flags: u64,
}

/// Attribute bytes of a CONNECT request (exposed for tests).
pub fn connect_attrs(p: &ConnectParams, sock: RawFd) -> Vec<u8> {
    let mut a = Vec::new();
    if let Some(i) = p.index {
        put_attr(&mut a, NBD_ATTR_INDEX, &i.to_ne_bytes());
    }
    put_attr(&mut a, NBD_ATTR_SIZE_BYTES, &p.size_bytes.to_ne_bytes());
    put_attr(
        &mut a,
        NBD_ATTR_BLOCK_SIZE_BYTES,
        &p.block_size.to_ne_bytes(),
    );
    put_attr(&mut a, NBD_ATTR_SERVER_FLAGS, &p.server_flags.to_ne_bytes());
    put_attr(&mut a, NBD_ATTR_TIMEOUT, &p.timeout_secs.to_ne_bytes());
    put_attr(
        &mut a,
        NBD_ATTR_DEAD_CONN_TIMEOUT,
        &p.dead_conn_timeout_secs.to_ne_bytes(),
    );
    put_attr(&mut a, NBD_ATTR_CLIENT_FLAGS, &p.client_flags.to_ne_bytes());
    put_nested(&mut a, NBD_ATTR_SOCKETS, &sockets_attr(sock));
    a
}

fn sockets_attr(sock: RawFd) -> Vec<u8> {
    let mut fd_attr = Vec::new();
    put_attr(&mut fd_attr, NBD_SOCK_FD, &(sock as u32).to_ne_bytes());
    let mut item = Vec::new();
    put_nested(&mut item, NBD_SOCK_ITEM, &fd_attr);
    item
}

/// Connects `sock` (already in transmission phase) to an nbd device and
/// returns the device index the kernel chose.
pub fn connect(p: &ConnectParams, sock: RawFd) -> Result<u32> {
    let mut g = Genl::open()?;
    let fam = g.family_id("nbd")?;
    let replies = g
        .request(
            fam,
            NBD_CMD_CONNECT,
            NBD_GENL_VERSION,
            &connect_attrs(p, sock),
        )
        .context("NBD_CMD_CONNECT")?;
    for r in &replies {
        for (t, pl) in attrs(r) {
            if t == NBD_ATTR_INDEX && pl.len() >= 4 {
                return Ok(u32::from_ne_bytes([pl[0], pl[1], pl[2], pl[3]]));
            }
        }
    }
    p.index.context("kernel did not report the nbd index")
}

/// Replaces the dead socket of device `index` with `sock`.
pub fn reconfigure(index: u32, sock: RawFd) -> Result<()> {
    let mut g = Genl::open()?;
    let fam = g.family_id("nbd")?;
    let mut a = Vec::new();
    put_attr(&mut a, NBD_ATTR_INDEX, &index.to_ne_bytes());
    put_nested(&mut a, NBD_ATTR_SOCKETS, &sockets_attr(sock));
    g.request(fam, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION, &a)
        .context("NBD_CMD_RECONFIGURE")?;
    Ok(())
}

/// Disconnects device `index` through netlink.
pub fn disconnect(index: u32) -> Result<()> {
    let mut g = Genl::open()?;
    let fam = g.family_id("nbd")?;
    let mut a = Vec::new();
    put_attr(&mut a, NBD_ATTR_INDEX, &index.to_ne_bytes());
    g.request(fam, NBD_CMD_DISCONNECT, NBD_GENL_VERSION, &a)
        .context("NBD_CMD_DISCONNECT")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layout() {
        let p = ConnectParams {
            index: None,
            size_bytes: 1 << 20,
            block_size: 512,
            server_flags: 0x0d,
            timeout_secs: 30,
            dead_conn_timeout_secs: 10,
            client_flags: 0,
        };
        let a = connect_attrs(&p, 7);
        let parsed = attrs(&a);
        let types: Vec<u16> = parsed.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![2, 3, 5, 4, 8, 6, 7]);
        assert_eq!(parsed[0].1, (1u64 << 20).to_ne_bytes());
        // SOCKETS -> SOCK_ITEM -> SOCK_FD = 7, each nested flag set on the wire.
        let sockets = parsed[6].1;
        assert_eq!(
            u16::from_ne_bytes([a[a.len() - 14], a[a.len() - 13]]),
            7 | NLA_F_NESTED
        );
        let item = attrs(sockets);
        assert_eq!(item[0].0, 1);
        let fd = attrs(item[0].1);
        assert_eq!(fd, vec![(1u16, &7u32.to_ne_bytes()[..])]);
        // Odd payloads are padded to 4.
        let mut b = Vec::new();
        put_attr(&mut b, 2, b"nbd\0\x01");
        assert_eq!(b.len(), 12);
        assert_eq!(attrs(&b)[0].1, b"nbd\0\x01");
    }

    #[test]
    fn resolves_a_family_that_exists() {
        // "nlctrl" is always present; proves the request/ack loop works here.
        let mut g = match Genl::open() {
            Ok(g) => g,
            Err(e) => {
                test_support::skip(
                    "resolves_a_family_that_exists",
                    &format!("no netlink socket here: {e:#}"),
                );
                return;
            }
        };
        assert_eq!(g.family_id("nlctrl").unwrap(), GENL_ID_CTRL);
        let (id, groups) = g.family("nlctrl").unwrap();
        assert_eq!(id, GENL_ID_CTRL);
        assert!(groups.iter().any(|(n, _)| n == "notify"), "{groups:?}");
        assert!(g.family_id("no-such-family-xyz").is_err());
    }
}

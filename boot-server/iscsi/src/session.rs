//! One connection's life on its own thread: the login exchange (driving
//! `login::Login`), then the full feature phase: command numbering (CmdSN window,
//! StatSN), SCSI Command / Response, Data-In (split to the initiator's
//! MaxRecvDataSegmentLength, status collapsed into the last Data-In), Data-Out with
//! immediate, unsolicited and R2T-solicited data (DataSN / offset checks), NOP-Out/In,
//! Text (SendTargets), task management (ABORT TASK, ABORT/CLEAR TASK SET, LUN RESET,
//! target resets; others answered "not supported") and Logout. Error recovery level 0:
//! protocol errors are rejected or end the connection, never panic.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::discovery;
use crate::login::{Login, Negotiated, SessionKind, Step};
use crate::pdu::{op, read_pdu, Digests, Pdu, PduError, RESERVED_TAG};
use crate::scsi::{self, decode_lun, Lu, Reply, Sense, Transfer};
use crate::server::{open_disk, Resolved, Ticket};

/// A client that accepts no bytes for this long is cut off.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a connection to the end (logout, disconnect or revocation).
pub(crate) fn connection(sock: TcpStream, peer: SocketAddr, ticket: Ticket) -> Result<()> {
    sock.set_nonblocking(false)?;
    sock.set_nodelay(true).ok();
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let local = sock.local_addr().context("local address")?;
    let reg = ticket.registry().clone();
    sock.set_read_timeout(Some(reg.limits.login_timeout))?;
    let mut reader = BufReader::with_capacity(256 * 1024, sock.try_clone()?);
    let mut writer = sock.try_clone()?;

    // Login phase.
    let (admin, discovery_chaps) = reg.credentials(peer.ip());
    let mut login =
        Login::new(peer.ip(), reg.limits.negotiation.clone()).with_admin(admin, discovery_chaps);
    let resolved: RefCell<Option<(String, Resolved)>> = RefCell::new(None);
    let lookup = |iqn: &str| {
        let r = reg.lookup(iqn, peer.ip());
        let ans = match &r {
            Some(r) if r.address_ok => crate::login::Lookup::Allowed(r.cfg.chap.clone()),
            Some(_) => crate::login::Lookup::AdminOnly,
            None => crate::login::Lookup::NotFound,
        };
        *resolved.borrow_mut() = r.map(|r| (iqn.to_string(), r));
        ans
    };
    let mut tsih = || reg.new_tsih();
    let neg: Negotiated = loop {
        let req = match read_pdu(&mut reader, Digests::default(), 64 * 1024) {
            Ok(p) => p,
            Err(PduError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(());
            }
            Err(e) => return Err(e).context("login"),
        };
        match login.step(&req, &lookup, &mut tsih) {
            Step::Reply(p) => writer.write_all(&p.encode(Digests::default()))?,
            Step::Fail(p, st) => {
                tracing::info!(%peer, initiator = login.initiator().unwrap_or("?"), status = ?st,
                    "iSCSI login refused");
                writer.write_all(&p.encode(Digests::default()))?;
                let _ = sock.shutdown(Shutdown::Both);
                return Ok(());
            }
            Step::Done(mut p, n) => {
                let failed = |p: &mut Pdu, class: u8| {
                    p.bhs[1] &= !0x83;
                    p.bhs[14] = 0;
                    p.bhs[15] = 0;
                    p.bhs[36] = class;
                    p.bhs[37] = if class == 2 { 3 } else { 0 };
                    p.data.clear();
                };
                if let SessionKind::Normal(iqn) = &n.kind {
                    let r = resolved.borrow_mut().take();
                    let ok =
                        matches!(&r, Some((name, res)) if name == iqn && ticket.bind(iqn, res));
                    if !ok {
                        failed(&mut p, 2);
                        writer.write_all(&p.encode(Digests::default()))?;
                        return Ok(());
                    }
                    *resolved.borrow_mut() = r;
                }
                writer.write_all(&p.encode(Digests::default()))?;
                break *n;
            }
        }
    };
    let lu = match &neg.kind {
        SessionKind::Discovery => None,
        SessionKind::Normal(iqn) => {
            let (_, r) = resolved.borrow_mut().take().context("resolved target")?;
            let disk = open_disk(&reg.store, &r.cfg.disk)
                .with_context(|| format!("open disk of {iqn}"))?;
            let name = match &r.cfg.disk {
                crate::server::DiskRef::Base(n) => format!("base:{n}"),
                crate::server::DiskRef::Overlay(n) => format!("overlay:{n}"),
            };
            Some(Lu::new(disk, &name))
        }
    };
    tracing::info!(%peer, initiator = %neg.initiator, kind = ?neg.kind,
        chap_user = neg.chap_user.as_deref().unwrap_or("-"), admin = neg.admin,
        header_digest = neg.params.header_digest, data_digest = neg.params.data_digest,
        "iSCSI login");
    ticket.set_info(crate::server::SessionInfo {
        peer,
        initiator: neg.initiator.clone(),
        target: match &neg.kind {
            SessionKind::Normal(t) => Some(t.clone()),
            SessionKind::Discovery => None,
        },
        chap_user: neg.chap_user.clone(),
        admin: neg.admin,
        header_digest: neg.params.header_digest,
        data_digest: neg.params.data_digest,
    });
    sock.set_read_timeout(None)?;
    let mut s = Session {
        digests: Digests {
            header: neg.params.header_digest,
            data: neg.params.data_digest,
        },
        stat_sn: neg.stat_sn,
        exp_cmd_sn: neg.exp_cmd_sn,
        window: reg.limits.negotiation.cmd_window.max(1),
        lu,
        pending: HashMap::new(),
        next_ttt: 1,
        writer,
        peer,
        portal: discovery::portal(local),
        reg: &reg,
        neg,
    };
    let r = s.run(&mut reader);
    let _ = sock.shutdown(Shutdown::Both);
    if let Some(lu) = &s.lu {
        if let Err(e) = lu.disk().flush() {
            tracing::warn!(%peer, "flush at disconnect: {e}");
        }
    }
    drop(ticket);
    r
}

/// A write command collecting its Data-Out bytes.
struct WriteTask {
    lun: u64,
    lun_field: [u8; 8],
    cdb: Vec<u8>,
    buf: Vec<u8>,
    /// Bytes received so far (in order).
    received: usize,
    /// Bytes the command uses: min(EDTL, the CDB's length); R2Ts stop there.
    want: usize,
    /// Residual flag and count for the response.
    resid_flag: u8,
    resid: u32,
    /// DataSN expected next in the current sequence.
    next_datasn: u32,
    /// The current R2T: (TTT, end offset), or None during unsolicited data.
    r2t: Option<(u32, usize)>,
    /// R2Ts sent so far.
    r2tsn: u32,
}

enum Flow {
    Continue,
    Close,
}

struct Session<'a> {
    neg: Negotiated,
    digests: Digests,
    stat_sn: u32,
    exp_cmd_sn: u32,
    window: u32,
    lu: Option<Lu>,
    pending: HashMap<u32, WriteTask>,
    next_ttt: u32,
    writer: TcpStream,
    peer: SocketAddr,
    portal: String,
    reg: &'a std::sync::Arc<crate::server::Registry>,
}

impl Session<'_> {
    fn max_cmd_sn(&self) -> u32 {
        self.exp_cmd_sn.wrapping_add(self.window - 1)
    }

    fn send(&mut self, p: &Pdu) -> Result<()> {
        self.writer
            .write_all(&p.encode(self.digests))
            .context("send PDU")
    }

    /// Fills StatSN (advancing it), ExpCmdSN and MaxCmdSN of a response.
    fn numbered(&mut self, p: &mut Pdu) {
        p.set_u32(24, self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        p.set_u32(28, self.exp_cmd_sn);
        p.set_u32(32, self.max_cmd_sn());
    }

    fn reject(&mut self, req: &Pdu, reason: u8) -> Result<()> {
        let mut p = Pdu::new(op::REJECT);
        p.bhs[1] = 0x80;
        p.bhs[2] = reason;
        p.set_u32(16, RESERVED_TAG);
        self.numbered(&mut p);
        p.data = req.bhs.to_vec();
        tracing::debug!(peer = %self.peer, opcode = req.opcode(), reason, "PDU rejected");
        self.send(&p)
    }

    fn run(&mut self, reader: &mut BufReader<TcpStream>) -> Result<()> {
        let max_recv = self.neg.params.max_recv_data_segment_length as usize;
        loop {
            let pdu = match read_pdu(reader, self.digests, max_recv) {
                Ok(p) => p,
                Err(PduError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return Ok(());
                }
                Err(PduError::DataDigest(p)) => {
                    self.reject(&p, 0x02)?;
                    continue;
                }
                Err(e) => return Err(e).context("read PDU"),
            };
            if let Flow::Close = self.dispatch(pdu)? {
                return Ok(());
            }
        }
    }

    /// CmdSN bookkeeping for a non-immediate command: false if it is outside the
    /// window (silently ignored, RFC 7143 §4.2.2.1).
    fn accept_cmd_sn(&mut self, p: &Pdu) -> bool {
        let cmd_sn = p.u32_at(24);
        if p.immediate() {
            return true;
        }
        if cmd_sn != self.exp_cmd_sn {
            tracing::debug!(peer = %self.peer, cmd_sn, exp = self.exp_cmd_sn, "CmdSN outside the window: ignored");
            return false;
        }
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        true
    }

    fn dispatch(&mut self, p: Pdu) -> Result<Flow> {
        match p.opcode() {
            op::NOP_OUT => {
                if p.itt() == RESERVED_TAG {
                    // A reply to a NOP-In of ours (we send none) or a ping wanting none.
                    return Ok(Flow::Continue);
                }
                if !self.accept_cmd_sn(&p) {
                    return Ok(Flow::Continue);
                }
                let mut r = Pdu::new(op::NOP_IN);
                r.bhs[1] = 0x80;
                r.bhs[8..16].copy_from_slice(&p.bhs[8..16]);
                r.set_u32(16, p.itt());
                r.set_u32(20, RESERVED_TAG);
                self.numbered(&mut r);
                let max = self.neg.params.max_send_data_segment_length as usize;
                r.data = p.data[..p.data.len().min(max)].to_vec();
                self.send(&r)?;
            }
            op::SCSI_CMD => {
                if self.lu.is_none() {
                    self.reject(&p, 0x04)?;
                    return Ok(Flow::Continue);
                }
                if !self.accept_cmd_sn(&p) {
                    return Ok(Flow::Continue);
                }
                self.scsi_command(p)?;
            }
            op::DATA_OUT => self.data_out(p)?,
            op::TASK_MGMT => {
                if !self.accept_cmd_sn(&p) {
                    return Ok(Flow::Continue);
                }
                return self.task_mgmt(&p);
            }
            op::TEXT => {
                if !self.accept_cmd_sn(&p) {
                    return Ok(Flow::Continue);
                }
                self.text(&p)?;
            }
            op::LOGOUT => {
                if !self.accept_cmd_sn(&p) {
                    return Ok(Flow::Continue);
                }
                let reason = p.bhs[1] & 0x7f;
                let mut r = Pdu::new(op::LOGOUT_RESP);
                r.bhs[1] = 0x80;
                r.bhs[2] = if reason == 2 { 2 } else { 0 };
                r.set_u32(16, p.itt());
                self.numbered(&mut r);
                self.send(&r)?;
                tracing::info!(peer = %self.peer, initiator = %self.neg.initiator, "iSCSI logout");
                return Ok(if reason == 2 {
                    Flow::Continue
                } else {
                    Flow::Close
                });
            }
            op::SNACK | op::LOGIN => self.reject(&p, 0x04)?,
            _ => self.reject(&p, 0x05)?,
        }
        Ok(Flow::Continue)
    }

    fn text(&mut self, p: &Pdu) -> Result<()> {
        let mut r = Pdu::new(op::TEXT_RESP);
        r.bhs[1] = 0x80;
        r.set_u32(16, p.itt());
        r.set_u32(20, RESERVED_TAG);
        self.numbered(&mut r);
        if p.bhs[1] & 0x40 != 0 {
            // Multi-PDU text requests are not supported: answer with nothing.
        } else if let Ok(pairs) = crate::pdu::parse_text(&p.data) {
            let mut out = Vec::new();
            for (k, v) in pairs {
                if k == "SendTargets" {
                    let vis = self.reg.visible(self.peer.ip(), self.neg.admin);
                    // In a normal session only the session's own target may be named.
                    let vis: Vec<String> = match &self.neg.kind {
                        SessionKind::Discovery => vis,
                        SessionKind::Normal(t) => vis.into_iter().filter(|x| x == t).collect(),
                    };
                    let value = match (&self.neg.kind, v.as_str()) {
                        (SessionKind::Normal(t), "") => t.clone(),
                        _ => v,
                    };
                    out.extend(discovery::send_targets(&value, &vis, &self.portal));
                } else {
                    out.extend(crate::pdu::encode_text(&[(k, "NotUnderstood".into())]));
                }
            }
            let max = self.neg.params.max_send_data_segment_length as usize;
            if out.len() > max {
                out.truncate(max);
                // Cut at the last complete pair.
                if let Some(i) = out.iter().rposition(|b| *b == 0) {
                    out.truncate(i + 1);
                }
            }
            r.data = out;
        } else {
            return self.reject(p, 0x09);
        }
        self.send(&r)
    }

    fn task_mgmt(&mut self, p: &Pdu) -> Result<Flow> {
        let function = p.bhs[1] & 0x7f;
        let lun = decode_lun(p.lun_field());
        let referenced = p.u32_at(20);
        let response: u8 = match function {
            1 => {
                if self.pending.remove(&referenced).is_some() {
                    0
                } else {
                    1
                }
            }
            2 | 4 | 5 if lun != 0 => 2,
            2 | 4 | 5 | 6 | 7 => {
                self.pending.clear();
                0
            }
            3 => 5,
            8 => 4,
            _ => 255,
        };
        tracing::debug!(peer = %self.peer, function, response, "task management");
        let mut r = Pdu::new(op::TASK_MGMT_RESP);
        r.bhs[1] = 0x80;
        r.bhs[2] = response;
        r.set_u32(16, p.itt());
        self.numbered(&mut r);
        self.send(&r)?;
        Ok(if function == 7 {
            Flow::Close
        } else {
            Flow::Continue
        })
    }

    fn scsi_command(&mut self, p: Pdu) -> Result<()> {
        let flags = p.bhs[1];
        let write = flags & 0x20 != 0;
        let edtl = p.u32_at(20) as usize;
        let mut cdb = p.bhs[32..48].to_vec();
        // Extended CDB AHS (type 1): the CDB's bytes beyond 16.
        if p.ahs.len() >= 4 && p.ahs[2] == 1 {
            let len = usize::from(u16::from_be_bytes([p.ahs[0], p.ahs[1]]));
            if let Some(ext) = p.ahs.get(4..4 + len.saturating_sub(1)) {
                cdb.extend_from_slice(ext);
            }
        }
        let lun = decode_lun(p.lun_field());
        let lu = self.lu.as_ref().expect("normal session");
        match scsi::transfer(&cdb) {
            Transfer::Out(spdtl) if spdtl > 0 || edtl > 0 => {
                let spdtl = spdtl as usize;
                // A length mismatch is processed FCP-4 style: only min(EDTL, SPDTL) bytes
                // are transferred and used, and the residual is reported.
                let (resid_flag, resid) = if edtl < spdtl {
                    (0x04, (spdtl - edtl) as u32)
                } else if edtl > spdtl {
                    (0x02, (edtl - spdtl) as u32)
                } else {
                    (0, 0)
                };
                let want = edtl.min(spdtl);
                if lun == 0 {
                    if let Err(sense) = lu.precheck(&cdb) {
                        return self.respond(&p, &Reply::check(sense), resid_flag, resid, 0);
                    }
                }
                if spdtl > scsi::MAX_TRANSFER_BLOCKS as usize * scsi::BLOCK as usize
                    && cdb[0] != 0x42
                {
                    let reply = Reply::check(Sense::INVALID_FIELD_IN_CDB);
                    return self.respond(&p, &reply, resid_flag, resid, 0);
                }
                if want == 0 || !write {
                    let reply = lu.execute(lun, &cdb, &[]);
                    return self.respond(&p, &reply, resid_flag, resid, 0);
                }
                let imm = p.data.len();
                let first_burst = self.neg.params.first_burst_length as usize;
                if imm > edtl || imm > first_burst || (imm > 0 && !self.neg.params.immediate_data) {
                    return self.reject(&p, 0x04);
                }
                let mut buf = vec![0u8; edtl];
                buf[..imm].copy_from_slice(&p.data);
                let task = WriteTask {
                    lun,
                    lun_field: p.lun_field(),
                    cdb,
                    buf,
                    received: imm,
                    want,
                    resid_flag,
                    resid,
                    next_datasn: 0,
                    r2t: None,
                    r2tsn: 0,
                };
                let itt = p.itt();
                // F bit: no unsolicited Data-Out follows.
                let unsolicited = flags & 0x80 == 0 && !self.neg.params.initial_r2t;
                self.pending.insert(itt, task);
                if !unsolicited {
                    self.advance_write(itt)?;
                }
                Ok(())
            }
            _ => {
                let reply = lu.execute(lun, &cdb, &[]);
                self.respond_with_data(&p, reply, edtl)
            }
        }
    }

    /// After a burst: solicit the next one with an R2T, or run the command.
    fn advance_write(&mut self, itt: u32) -> Result<()> {
        let max_burst = self.neg.params.max_burst_length as usize;
        let (stat_sn, exp_cmd_sn, max_cmd_sn) = (self.stat_sn, self.exp_cmd_sn, self.max_cmd_sn());
        let Some(t) = self.pending.get_mut(&itt) else {
            return Ok(());
        };
        if t.received < t.want {
            let ttt = self.next_ttt;
            self.next_ttt = self.next_ttt.wrapping_add(1).max(1);
            if self.next_ttt == RESERVED_TAG {
                self.next_ttt = 1;
            }
            let len = (t.want - t.received).min(max_burst);
            let mut r = Pdu::new(op::R2T);
            r.bhs[1] = 0x80;
            r.bhs[8..16].copy_from_slice(&t.lun_field);
            r.set_u32(16, itt);
            r.set_u32(20, ttt);
            r.set_u32(24, stat_sn);
            r.set_u32(28, exp_cmd_sn);
            r.set_u32(32, max_cmd_sn);
            r.set_u32(36, t.r2tsn);
            r.set_u32(40, t.received as u32);
            r.set_u32(44, len as u32);
            t.r2t = Some((ttt, t.received + len));
            t.next_datasn = 0;
            t.r2tsn += 1;
            return self.send(&r);
        }
        let t = self.pending.remove(&itt).expect("present");
        let lu = self.lu.as_ref().expect("normal session");
        let reply = lu.execute(t.lun, &t.cdb, &t.buf[..t.want]);
        let mut hdr = Pdu::new(op::SCSI_CMD);
        hdr.set_u32(16, itt);
        self.respond(&hdr, &reply, t.resid_flag, t.resid, t.r2tsn)
    }

    fn data_out(&mut self, p: Pdu) -> Result<()> {
        let itt = p.itt();
        let first_burst = self.neg.params.first_burst_length as usize;
        let Some(t) = self.pending.get_mut(&itt) else {
            // Data for a task already answered (refused early or aborted): dropped.
            tracing::trace!(peer = %self.peer, itt, "Data-Out for no pending task");
            return Ok(());
        };
        let ttt = p.u32_at(20);
        let datasn = p.u32_at(36);
        let offset = p.u32_at(40) as usize;
        let end = offset + p.data.len();
        let limit = match t.r2t {
            None => first_burst.min(t.buf.len()),
            Some((_, e)) => e,
        };
        let ok = match t.r2t {
            None => ttt == RESERVED_TAG,
            Some((want, _)) => ttt == want,
        } && datasn == t.next_datasn
            && offset == t.received
            && end <= limit;
        if !ok {
            tracing::debug!(peer = %self.peer, itt, datasn, offset, "Data-Out out of sequence");
            let t = self.pending.remove(&itt).expect("present");
            let reply = Reply::check(Sense::DATA_PHASE_ERROR);
            let mut hdr = Pdu::new(op::SCSI_CMD);
            hdr.set_u32(16, itt);
            return self.respond(&hdr, &reply, 0, 0, t.r2tsn);
        }
        t.buf[offset..end].copy_from_slice(&p.data);
        t.received = end;
        t.next_datasn += 1;
        if p.final_bit() {
            if t.r2t.is_some() && t.received < limit {
                let t = self.pending.remove(&itt).expect("present");
                let reply = Reply::check(Sense::DATA_PHASE_ERROR);
                let mut hdr = Pdu::new(op::SCSI_CMD);
                hdr.set_u32(16, itt);
                return self.respond(&hdr, &reply, 0, 0, t.r2tsn);
            }
            return self.advance_write(itt);
        }
        Ok(())
    }

    /// Sends a command's Data-In (clipped to `edtl`) and its status.
    fn respond_with_data(&mut self, req: &Pdu, reply: Reply, edtl: usize) -> Result<()> {
        let total = reply.data.len();
        let send = total.min(edtl);
        let (flag, resid) = if total > edtl {
            (0x04u8, (total - edtl) as u32)
        } else if total < edtl {
            (0x02u8, (edtl - total) as u32)
        } else {
            (0, 0)
        };
        if send == 0 {
            return self.respond(req, &reply, flag, resid, 0);
        }
        let seg = self.neg.params.max_send_data_segment_length as usize;
        let burst = self.neg.params.max_burst_length as usize;
        let collapse = reply.sense.is_none();
        let mut off = 0usize;
        let mut datasn = 0u32;
        while off < send {
            let burst_end = ((off / burst) + 1) * burst;
            let n = seg.min(send - off).min(burst_end - off);
            let last = off + n == send;
            let mut d = Pdu::new(op::DATA_IN);
            let mut f = 0u8;
            if last || off + n == burst_end {
                f |= 0x80;
            }
            d.bhs[8..16].copy_from_slice(&req.bhs[8..16]);
            d.set_u32(16, req.itt());
            d.set_u32(20, RESERVED_TAG);
            if last && collapse {
                f |= 0x01 | flag;
                d.bhs[3] = reply.status;
                self.numbered(&mut d);
                d.set_u32(44, resid);
            } else {
                d.set_u32(28, self.exp_cmd_sn);
                d.set_u32(32, self.max_cmd_sn());
            }
            d.bhs[1] = f;
            d.set_u32(36, datasn);
            d.set_u32(40, off as u32);
            d.data = reply.data[off..off + n].to_vec();
            self.send(&d)?;
            datasn += 1;
            off += n;
        }
        if collapse {
            return Ok(());
        }
        self.respond(req, &reply, flag, resid, datasn)
    }

    /// Sends a SCSI Response (status, sense, residual).
    fn respond(
        &mut self,
        req: &Pdu,
        reply: &Reply,
        resid_flag: u8,
        resid: u32,
        exp_datasn: u32,
    ) -> Result<()> {
        let mut r = Pdu::new(op::SCSI_RESP);
        r.bhs[1] = 0x80 | resid_flag;
        r.bhs[2] = 0;
        r.bhs[3] = reply.status;
        r.set_u32(16, req.itt());
        self.numbered(&mut r);
        r.set_u32(36, exp_datasn);
        r.set_u32(44, resid);
        if let Some(s) = reply.sense {
            let sense = s.fixed();
            r.data = (sense.len() as u16).to_be_bytes().to_vec();
            r.data.extend_from_slice(&sense);
            tracing::debug!(peer = %self.peer, opcode = req.bhs[32], key = s.key, asc = s.asc, ascq = s.ascq, "CHECK CONDITION");
        }
        self.send(&r)
    }
}

//! The login phase (RFC 7143 §6, §11.12-11.13) as a pure state machine: security
//! negotiation (AuthMethod None, or CHAP with MD5, one-way or mutual) and operational
//! parameter negotiation (MaxRecvDataSegmentLength, First/MaxBurstLength, ImmediateData,
//! InitialR2T, Header/DataDigest CRC32C, MaxConnections=1, ...). No I/O: the server feeds
//! Login Request PDUs to [`Login::step`] and sends what it returns.

use std::net::IpAddr;

use md5::{Digest, Md5};
use rand::RngCore;

use crate::pdu::{encode_text, op, parse_text, Pdu};

/// A CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapSecret {
    /// CHAP_N.
    pub user: String,
    /// The shared secret (never logged).
    pub secret: String,
}

impl std::fmt::Debug for ChapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapSecret")
            .field("user", &self.user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// CHAP credentials a target requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chap {
    /// What the initiator must prove it knows.
    pub initiator: ChapSecret,
    /// For mutual CHAP: the name and secret the target answers the initiator's
    /// challenge with. An initiator asking for mutual CHAP when this is None is refused.
    pub target: Option<ChapSecret>,
}

/// What the target table says about a target name for a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No such target, or the peer's address may not reach it.
    NotFound,
    /// The peer may log in, with this authentication (None: no authentication);
    /// the admin credential ([`Login::with_admin`]) is accepted too.
    Allowed(Option<Chap>),
    /// The target exists but the peer's address may not reach it: only the admin
    /// credential logs in.
    AdminOnly,
}

/// Values this target offers / accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Our MaxRecvDataSegmentLength declaration.
    pub max_recv_data_segment_length: u32,
    /// Largest FirstBurstLength we accept.
    pub first_burst_length: u32,
    /// Largest MaxBurstLength we accept.
    pub max_burst_length: u32,
    /// Command window (MaxCmdSN - ExpCmdSN + 1).
    pub cmd_window: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_recv_data_segment_length: 256 * 1024,
            first_burst_length: 256 * 1024,
            max_burst_length: 1024 * 1024,
            cmd_window: 64,
        }
    }
}

/// Negotiated operational parameters of a connection/session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    /// Largest data segment the initiator accepts (we send at most this much per PDU).
    pub max_send_data_segment_length: u32,
    /// Largest data segment we accept.
    pub max_recv_data_segment_length: u32,
    /// Unsolicited data (immediate + unsolicited Data-Out) per command.
    pub first_burst_length: u32,
    /// Solicited data per R2T / Data-In sequence.
    pub max_burst_length: u32,
    /// Data may come with the SCSI Command PDU.
    pub immediate_data: bool,
    /// No unsolicited Data-Out PDUs.
    pub initial_r2t: bool,
    /// CRC32C header digest.
    pub header_digest: bool,
    /// CRC32C data digest.
    pub data_digest: bool,
}

impl Params {
    fn defaults(l: &Limits) -> Self {
        Params {
            max_send_data_segment_length: 8192,
            max_recv_data_segment_length: 8192,
            first_burst_length: 65536.min(l.first_burst_length),
            max_burst_length: 262144.min(l.max_burst_length),
            immediate_data: true,
            initial_r2t: true,
            header_digest: false,
            data_digest: false,
        }
    }
}

/// Discovery or normal session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// SendTargets only.
    Discovery,
    /// I/O to the named target.
    Normal(String),
}

/// A finished login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// What kind of session.
    pub kind: SessionKind,
    /// The initiator's iSCSI name.
    pub initiator: String,
    /// The initiator's session id part.
    pub isid: [u8; 6],
    /// Target session identifying handle we assigned.
    pub tsih: u16,
    /// Operational parameters.
    pub params: Params,
    /// StatSN of the next response.
    pub stat_sn: u32,
    /// Next expected CmdSN.
    pub exp_cmd_sn: u32,
    /// The CHAP user that authenticated, if any.
    pub chap_user: Option<String>,
    /// Authenticated with the admin credential (sees and opens every target).
    pub admin: bool,
}

/// Login status class/detail (RFC 7143 §11.13.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// 0x0200 initiator error.
    InitiatorError,
    /// 0x0201 authentication failure.
    AuthFailure,
    /// 0x0203 target not found.
    NotFound,
    /// 0x0205 unsupported version.
    UnsupportedVersion,
    /// 0x0207 missing parameter.
    MissingParameter,
    /// 0x020a session does not exist.
    NoSession,
    /// 0x020b invalid request during login.
    InvalidDuringLogin,
}

impl Status {
    fn code(self) -> (u8, u8) {
        match self {
            Status::InitiatorError => (2, 0),
            Status::AuthFailure => (2, 1),
            Status::NotFound => (2, 3),
            Status::UnsupportedVersion => (2, 5),
            Status::MissingParameter => (2, 7),
            Status::NoSession => (2, 0x0a),
            Status::InvalidDuringLogin => (2, 0x0b),
        }
    }
}

/// What to do after one Login Request.
#[derive(Debug)]
pub enum Step {
    /// Send this response and wait for the next request.
    Reply(Pdu),
    /// Send this (failure) response and close the connection.
    Fail(Pdu, Status),
    /// Send this response; the connection is now in full feature phase.
    Done(Pdu, Box<Negotiated>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Auth {
    /// AuthMethod not settled yet.
    Start,
    /// CHAP chosen; waiting for CHAP_A.
    ChapA,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    ChapR { id: u8, challenge: Vec<u8> },
    /// Authenticated (or none required).
    Done,
}

/// The login state of one connection.
pub struct Login {
    peer: IpAddr,
    limits: Limits,
    auth: Auth,
    chap: Option<Chap>,
    chap_user: Option<String>,
    /// The server-wide admin credential (accepted for every target, from anywhere).
    admin: Option<Chap>,
    /// Discovery: the credentials of the targets this peer may see.
    discovery_chaps: Vec<Chap>,
    /// The target is reachable by the admin credential only.
    admin_only: bool,
    /// Discovery settled on CHAP (the initiator preferred it).
    discovery_chap: bool,
    /// Authenticated with the admin credential.
    is_admin: bool,
    kind: Option<SessionKind>,
    initiator: Option<String>,
    params: Params,
    declared: bool,
    first: bool,
    text: Vec<u8>,
    stat_sn: u32,
    isid: [u8; 6],
    tsih: u16,
}

/// Renders bytes as CHAP's `0x` hex.
fn hex(b: &[u8]) -> String {
    let mut s = String::from("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Parses CHAP binary values: `0x` hex or `0b` base64.
pub fn parse_chap_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if h.is_empty() || h.len() > 2048 {
            return None;
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
            .collect()
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        base64_decode(b)
    } else {
        None
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    // Hand-written: the only base64 use here, on short CHAP values.
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        })
    };
    let s = s.trim_end_matches('=').as_bytes();
    if s.is_empty() || s.len() > 2048 {
        return None;
    }
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// CHAP response MD5(id || secret || challenge).
pub fn chap_response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(challenge);
    h.finalize().into()
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn is_operational(k: &str) -> bool {
    matches!(
        k,
        "HeaderDigest"
            | "DataDigest"
            | "MaxConnections"
            | "InitialR2T"
            | "ImmediateData"
            | "MaxRecvDataSegmentLength"
            | "MaxBurstLength"
            | "FirstBurstLength"
            | "DefaultTime2Wait"
            | "DefaultTime2Retain"
            | "MaxOutstandingR2T"
            | "DataPDUInOrder"
            | "DataSequenceInOrder"
            | "ErrorRecoveryLevel"
            | "IFMarker"
            | "OFMarker"
    )
}

fn num(v: &str, lo: u32, hi: u32) -> Option<u32> {
    let n: u32 = v.parse().ok()?;
    (lo..=hi).contains(&n).then_some(n)
}

fn yes_no(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yn(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

impl Login {
    /// A login for a connection from `peer`.
    pub fn new(peer: IpAddr, limits: Limits) -> Self {
        let mut r = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut r);
        Login {
            peer,
            params: Params::defaults(&limits),
            limits,
            auth: Auth::Start,
            chap: None,
            chap_user: None,
            admin: None,
            discovery_chaps: Vec::new(),
            admin_only: false,
            discovery_chap: false,
            is_admin: false,
            kind: None,
            initiator: None,
            declared: false,
            first: true,
            text: Vec::new(),
            stat_sn: u32::from_be_bytes(r) & 0x00ff_ffff,
            isid: [0; 6],
            tsih: 0,
        }
    }

    /// Accepts `admin` for every target, from any address, and in discovery (where
    /// it shows every target). `discovery_chaps` are the credentials of the targets
    /// this peer may see: a discovery session offering CHAP first logs in with one of
    /// them or with `admin`.
    pub fn with_admin(mut self, admin: Option<Chap>, discovery_chaps: Vec<Chap>) -> Self {
        self.admin = admin;
        self.discovery_chaps = discovery_chaps;
        self
    }

    /// Whether security negotiation must settle on CHAP.
    fn wants_chap(&self) -> bool {
        self.chap.is_some() || self.admin_only || self.discovery_chap
    }

    /// The peer address this login is for.
    pub fn peer(&self) -> IpAddr {
        self.peer
    }

    /// The initiator name, once the first request named it.
    pub fn initiator(&self) -> Option<&str> {
        self.initiator.as_deref()
    }

    fn response(&mut self, req: &Pdu, transit: bool, csg: u8, nsg: u8) -> Pdu {
        let mut p = Pdu::new(op::LOGIN_RESP);
        p.bhs[1] = (csg << 2) | if transit { 0x80 | nsg } else { 0 };
        p.bhs[2] = 0; // version max
        p.bhs[3] = 0; // version active
        p.bhs[8..14].copy_from_slice(&req.bhs[8..14]);
        if transit && nsg == 3 {
            p.bhs[14..16].copy_from_slice(&self.tsih.to_be_bytes());
        } else {
            p.bhs[14..16].copy_from_slice(&req.bhs[14..16]);
        }
        p.set_u32(16, req.itt());
        p.set_u32(24, self.stat_sn);
        self.stat_sn = self.stat_sn.wrapping_add(1);
        let cmd_sn = req.u32_at(24);
        p.set_u32(28, cmd_sn);
        p.set_u32(
            32,
            cmd_sn.wrapping_add(self.limits.cmd_window.saturating_sub(1)),
        );
        p
    }

    fn fail(&mut self, req: &Pdu, st: Status) -> Step {
        let csg = (req.bhs[1] >> 2) & 3;
        let mut p = self.response(req, false, csg, 0);
        let (c, d) = st.code();
        p.bhs[36] = c;
        p.bhs[37] = d;
        Step::Fail(p, st)
    }

    /// Handles one Login Request. `lookup` answers which targets this peer may open
    /// and how they authenticate; `new_tsih` allocates the session handle at the end.
    pub fn step(
        &mut self,
        req: &Pdu,
        lookup: &dyn Fn(&str) -> Lookup,
        new_tsih: &mut dyn FnMut() -> u16,
    ) -> Step {
        if req.opcode() != op::LOGIN {
            return self.fail(req, Status::InvalidDuringLogin);
        }
        let flags = req.bhs[1];
        let transit = flags & 0x80 != 0;
        let cont = flags & 0x40 != 0;
        let csg = (flags >> 2) & 3;
        let nsg = flags & 3;
        if (transit && cont) || csg == 2 || (transit && (nsg == 2 || nsg <= csg)) {
            return self.fail(req, Status::InitiatorError);
        }
        if req.bhs[3] > 0 {
            // Version-min above 0.
            return self.fail(req, Status::UnsupportedVersion);
        }
        if self.first {
            self.isid.copy_from_slice(&req.bhs[8..14]);
            if u16::from_be_bytes([req.bhs[14], req.bhs[15]]) != 0 {
                // Adding a connection to an existing session: MaxConnections=1.
                return self.fail(req, Status::NoSession);
            }
        }
        if self.text.len() + req.data.len() > 64 * 1024 {
            return self.fail(req, Status::InitiatorError);
        }
        self.text.extend_from_slice(&req.data);
        if cont {
            // More text follows in the next request: acknowledge with an empty response.
            return Step::Reply(self.response(req, false, csg, 0));
        }
        let text = std::mem::take(&mut self.text);
        let Ok(pairs) = parse_text(&text) else {
            return self.fail(req, Status::InitiatorError);
        };
        let mut out: Vec<(String, String)> = Vec::new();
        if self.first {
            for (k, v) in &pairs {
                match k.as_str() {
                    "InitiatorName" => self.initiator = Some(v.clone()),
                    "SessionType" if v == "Discovery" => self.kind = Some(SessionKind::Discovery),
                    "SessionType" if v != "Normal" => {
                        return self.fail(req, Status::InitiatorError)
                    }
                    "TargetName" if self.kind.is_none() => {
                        self.kind = Some(SessionKind::Normal(v.clone()))
                    }
                    _ => {}
                }
            }
            if pairs
                .iter()
                .any(|(k, v)| k == "SessionType" && v == "Discovery")
            {
                self.kind = Some(SessionKind::Discovery);
            }
            if self.initiator.as_deref().is_none_or(str::is_empty) {
                return self.fail(req, Status::MissingParameter);
            }
            match self.kind.clone() {
                None => return self.fail(req, Status::MissingParameter),
                Some(SessionKind::Discovery) => self.chap = None,
                Some(SessionKind::Normal(t)) => match lookup(&t) {
                    Lookup::NotFound => return self.fail(req, Status::NotFound),
                    Lookup::AdminOnly if self.admin.is_none() => {
                        return self.fail(req, Status::NotFound)
                    }
                    Lookup::AdminOnly => self.admin_only = true,
                    Lookup::Allowed(c) => self.chap = c,
                },
            }
            if !self.wants_chap() && csg == 1 {
                self.auth = Auth::Done;
            }
            if self.kind != Some(SessionKind::Discovery) {
                out.push(("TargetPortalGroupTag".into(), "1".into()));
            }
            self.first = false;
        }
        if csg == 1 && self.auth != Auth::Done {
            // Skipping security negotiation for a target that requires CHAP.
            return self.fail(req, Status::AuthFailure);
        }
        for (k, v) in &pairs {
            match k.as_str() {
                "InitiatorName" | "InitiatorAlias" | "TargetName" | "SessionType" => {}
                "AuthMethod" if csg == 0 => {
                    let offered: Vec<&str> = v.split(',').collect();
                    // Discovery: CHAP when the initiator prefers it and there is a
                    // credential to check it against (the admin's, or a visible
                    // target's); otherwise None, as before.
                    if self.kind == Some(SessionKind::Discovery)
                        && self.auth == Auth::Start
                        && offered.first() == Some(&"CHAP")
                        && (self.admin.is_some() || !self.discovery_chaps.is_empty())
                    {
                        self.discovery_chap = true;
                    }
                    let want = if self.wants_chap() { "CHAP" } else { "None" };
                    if self.auth != Auth::Start || !offered.contains(&want) {
                        out.push((k.clone(), "Reject".into()));
                        return self.fail(req, Status::AuthFailure);
                    }
                    out.push((k.clone(), want.into()));
                    self.auth = if want == "CHAP" {
                        Auth::ChapA
                    } else {
                        Auth::Done
                    };
                }
                "CHAP_A" | "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C" if csg == 0 => {}
                k if is_operational(k) => {
                    if let Some(r) = self.negotiate(k, v) {
                        out.push((k.to_string(), r));
                    } else {
                        return self.fail(req, Status::InitiatorError);
                    }
                }
                _ => out.push((k.clone(), "NotUnderstood".into())),
            }
        }
        if csg == 0 {
            if let Err(st) = self.chap_step(&pairs, &mut out) {
                return self.fail(req, st);
            }
            if !self.wants_chap() && self.auth == Auth::Start {
                // AuthMethod defaults to None.
                self.auth = Auth::Done;
            }
        }
        let done = self.auth == Auth::Done;
        if done && !self.declared && (csg == 1 || (transit && nsg == 3)) {
            self.declared = true;
            if self.kind != Some(SessionKind::Discovery) || csg == 1 {
                let mrdsl = self.limits.max_recv_data_segment_length;
                if !out.iter().any(|(k, _)| k == "MaxRecvDataSegmentLength") {
                    out.push(("MaxRecvDataSegmentLength".into(), mrdsl.to_string()));
                }
            }
            self.params.max_recv_data_segment_length = self.limits.max_recv_data_segment_length;
        }
        let go = transit && done;
        if go && nsg == 3 {
            self.tsih = new_tsih();
        }
        let mut resp = self.response(req, go, csg, nsg);
        resp.data = encode_text(&out);
        if go && nsg == 3 {
            let neg = Negotiated {
                kind: self.kind.clone().unwrap_or(SessionKind::Discovery),
                initiator: self.initiator.clone().unwrap_or_default(),
                isid: self.isid,
                tsih: self.tsih,
                params: self.params.clone(),
                stat_sn: self.stat_sn,
                exp_cmd_sn: req.u32_at(24),
                chap_user: self.chap_user.clone(),
                admin: self.is_admin,
            };
            return Step::Done(resp, Box::new(neg));
        }
        Step::Reply(resp)
    }

    fn chap_step(
        &mut self,
        pairs: &[(String, String)],
        out: &mut Vec<(String, String)>,
    ) -> Result<(), Status> {
        let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        match self.auth.clone() {
            Auth::ChapA => {
                let Some(a) = get("CHAP_A") else {
                    return Ok(());
                };
                if !a.split(',').any(|x| x == "5") {
                    out.push(("CHAP_A".into(), "Reject".into()));
                    return Err(Status::AuthFailure);
                }
                let mut id = [0u8; 1];
                let mut challenge = vec![0u8; 16];
                rand::thread_rng().fill_bytes(&mut id);
                rand::thread_rng().fill_bytes(&mut challenge);
                out.push(("CHAP_A".into(), "5".into()));
                out.push(("CHAP_I".into(), id[0].to_string()));
                out.push(("CHAP_C".into(), hex(&challenge)));
                self.auth = Auth::ChapR {
                    id: id[0],
                    challenge,
                };
                Ok(())
            }
            Auth::ChapR { id, challenge } => {
                let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(Status::AuthFailure);
                };
                let r = parse_chap_binary(r).ok_or(Status::AuthFailure)?;
                // The credentials this login accepts: the target's own (not for a
                // target reachable by the admin only), a visible target's in
                // discovery, and the admin's. Each one whose user is CHAP_N is
                // checked (constant time), so a node named like the admin user
                // still logs in with its own secret.
                let mut candidates: Vec<(&Chap, bool)> = Vec::new();
                if let Some(c) = self.chap.as_ref().filter(|_| !self.admin_only) {
                    candidates.push((c, false));
                }
                if self.kind == Some(SessionKind::Discovery) {
                    candidates.extend(self.discovery_chaps.iter().map(|c| (c, false)));
                }
                if let Some(a) = &self.admin {
                    candidates.push((a, true));
                }
                let matched = candidates.into_iter().find(|(c, _)| {
                    let expect = chap_response(id, c.initiator.secret.as_bytes(), &challenge);
                    n == c.initiator.user && ct_eq(&r, &expect)
                });
                let Some((chap, admin)) = matched else {
                    tracing::info!(peer = %self.peer, user = n, "CHAP authentication failed");
                    return Err(Status::AuthFailure);
                };
                let chap = chap.clone();
                // Mutual CHAP: the initiator challenges us.
                if let (Some(i), Some(c)) = (get("CHAP_I"), get("CHAP_C")) {
                    let t = chap.target.as_ref().ok_or(Status::AuthFailure)?;
                    let i: u8 = i.parse().map_err(|_| Status::AuthFailure)?;
                    let c = parse_chap_binary(c).ok_or(Status::AuthFailure)?;
                    if c.is_empty() || ct_eq(&c, &challenge) {
                        // A reflected challenge: refuse (RFC 7143 §12.1.3).
                        return Err(Status::AuthFailure);
                    }
                    out.push(("CHAP_N".into(), t.user.clone()));
                    out.push((
                        "CHAP_R".into(),
                        hex(&chap_response(i, t.secret.as_bytes(), &c)),
                    ));
                } else if get("CHAP_I").is_some() || get("CHAP_C").is_some() {
                    return Err(Status::AuthFailure);
                }
                self.chap_user = Some(n.to_string());
                self.is_admin = admin;
                self.auth = Auth::Done;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Answers one operational key; None if the value is malformed.
    fn negotiate(&mut self, k: &str, v: &str) -> Option<String> {
        let p = &mut self.params;
        let l = &self.limits;
        Some(match k {
            "HeaderDigest" | "DataDigest" => {
                let pick = v
                    .split(',')
                    .find(|x| *x == "CRC32C" || *x == "None")
                    .unwrap_or("Reject");
                let on = pick == "CRC32C";
                if k == "HeaderDigest" {
                    p.header_digest = on;
                } else {
                    p.data_digest = on;
                }
                pick.to_string()
            }
            "MaxConnections" => {
                num(v, 1, 65535)?;
                "1".into()
            }
            "InitialR2T" => {
                p.initial_r2t = yes_no(v)?;
                yn(p.initial_r2t)
            }
            "ImmediateData" => {
                p.immediate_data = yes_no(v)?;
                yn(p.immediate_data)
            }
            "MaxRecvDataSegmentLength" => {
                p.max_send_data_segment_length = num(v, 512, 16_777_215)?;
                l.max_recv_data_segment_length.to_string()
            }
            "MaxBurstLength" => {
                p.max_burst_length = num(v, 512, 16_777_215)?.min(l.max_burst_length);
                p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
                p.max_burst_length.to_string()
            }
            "FirstBurstLength" => {
                p.first_burst_length = num(v, 512, 16_777_215)?
                    .min(l.first_burst_length)
                    .min(p.max_burst_length);
                p.first_burst_length.to_string()
            }
            "DefaultTime2Wait" => num(v, 0, 3600)?.to_string(),
            "DefaultTime2Retain" => {
                num(v, 0, 3600)?;
                "0".into()
            }
            "MaxOutstandingR2T" => {
                num(v, 1, 65535)?;
                "1".into()
            }
            "DataPDUInOrder" | "DataSequenceInOrder" => {
                yes_no(v)?;
                "Yes".into()
            }
            "ErrorRecoveryLevel" => {
                num(v, 0, 2)?;
                "0".into()
            }
            "IFMarker" | "OFMarker" => "No".into(),
            _ => "NotUnderstood".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(csg: u8, nsg: u8, transit: bool, text: &str) -> Pdu {
        let mut p = Pdu::new(op::LOGIN);
        p.bhs[0] |= 0x40;
        p.bhs[1] = (csg << 2) | if transit { 0x80 | nsg } else { 0 };
        p.bhs[8..14].copy_from_slice(&[0x80, 0, 0, 1, 2, 3]);
        p.set_u32(16, 1);
        p.data = text.replace(';', "\0").into_bytes();
        p
    }

    fn kv(p: &Pdu) -> Vec<(String, String)> {
        parse_text(&p.data).unwrap()
    }

    fn get(p: &Pdu, k: &str) -> Option<String> {
        kv(p).into_iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }

    fn chap() -> Chap {
        Chap {
            initiator: ChapSecret {
                user: "u".into(),
                secret: "initiatorsecret".into(),
            },
            target: Some(ChapSecret {
                user: "tgt".into(),
                secret: "targetsecret1".into(),
            }),
        }
    }

    #[test]
    fn none_login_negotiates_operational_keys() {
        let mut l = Login::new("127.0.0.1".parse().unwrap(), Limits::default());
        let lk = |t: &str| {
            if t == "iqn.x" {
                Lookup::Allowed(None)
            } else {
                Lookup::NotFound
            }
        };
        let mut tsih = || 7u16;
        let r = l.step(
            &req(
                1,
                3,
                true,
                "InitiatorName=iqn.i;TargetName=iqn.x;SessionType=Normal;HeaderDigest=CRC32C,None;DataDigest=None;MaxRecvDataSegmentLength=65536;ImmediateData=Yes;InitialR2T=No;FirstBurstLength=1048576;MaxBurstLength=262144;X-foo=1;",
            ),
            &lk,
            &mut tsih,
        );
        let Step::Done(p, n) = r else { panic!("{r:?}") };
        assert_eq!(get(&p, "HeaderDigest").as_deref(), Some("CRC32C"));
        assert_eq!(get(&p, "X-foo").as_deref(), Some("NotUnderstood"));
        assert_eq!(get(&p, "TargetPortalGroupTag").as_deref(), Some("1"));
        assert_eq!(n.tsih, 7);
        assert!(n.params.header_digest && !n.params.data_digest);
        assert_eq!(n.params.max_send_data_segment_length, 65536);
        assert_eq!(n.params.first_burst_length, 262144);
        assert!(!n.params.initial_r2t);
        assert_eq!(p.bhs[1], 0x80 | (1 << 2) | 3);
    }

    #[test]
    fn unknown_target_and_missing_name() {
        let mut l = Login::new("127.0.0.1".parse().unwrap(), Limits::default());
        let r = l.step(
            &req(
                0,
                1,
                true,
                "InitiatorName=iqn.i;TargetName=iqn.nope;AuthMethod=None;",
            ),
            &|_| Lookup::NotFound,
            &mut || 1,
        );
        assert!(matches!(r, Step::Fail(_, Status::NotFound)));
        let mut l = Login::new("127.0.0.1".parse().unwrap(), Limits::default());
        let r = l.step(
            &req(0, 1, true, "TargetName=iqn.x;"),
            &|_| Lookup::Allowed(None),
            &mut || 1,
        );
        assert!(matches!(r, Step::Fail(_, Status::MissingParameter)));
    }

    fn chap_flow(secret: &str, mutual: bool) -> Step {
        let c = chap();
        let lk = move |_: &str| Lookup::Allowed(Some(c.clone()));
        let mut l = Login::new("127.0.0.1".parse().unwrap(), Limits::default());
        let r = l.step(
            &req(
                0,
                1,
                true,
                "InitiatorName=iqn.i;TargetName=iqn.x;AuthMethod=None,CHAP;",
            ),
            &lk,
            &mut || 1,
        );
        let Step::Reply(p) = r else { panic!("{r:?}") };
        assert_eq!(get(&p, "AuthMethod").as_deref(), Some("CHAP"));
        assert_eq!(p.bhs[1] & 0x80, 0, "no transit before authentication");
        let Step::Reply(p) = l.step(&req(0, 1, false, "CHAP_A=5;"), &lk, &mut || 1) else {
            panic!()
        };
        let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
        let ch = parse_chap_binary(&get(&p, "CHAP_C").unwrap()).unwrap();
        let resp = chap_response(id, secret.as_bytes(), &ch);
        let mut t = format!("CHAP_N=u;CHAP_R={};", hex(&resp));
        if mutual {
            t.push_str("CHAP_I=9;CHAP_C=0x0102030405060708;");
        }
        l.step(&req(0, 1, true, &t), &lk, &mut || 1)
    }

    #[test]
    fn chap_one_way_mutual_and_wrong_secret() {
        let Step::Reply(p) = chap_flow("initiatorsecret", false) else {
            panic!()
        };
        assert_eq!(p.bhs[1] & 0x80, 0x80);
        let Step::Reply(p) = chap_flow("initiatorsecret", true) else {
            panic!()
        };
        let want = chap_response(9, b"targetsecret1", &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(get(&p, "CHAP_N").as_deref(), Some("tgt"));
        assert_eq!(get(&p, "CHAP_R"), Some(hex(&want)));
        assert!(matches!(
            chap_flow("wrong", false),
            Step::Fail(_, Status::AuthFailure)
        ));
    }

    #[test]
    fn chap_required_cannot_be_skipped() {
        let c = chap();
        let mut l = Login::new("127.0.0.1".parse().unwrap(), Limits::default());
        let r = l.step(
            &req(1, 3, true, "InitiatorName=iqn.i;TargetName=iqn.x;"),
            &move |_| Lookup::Allowed(Some(c.clone())),
            &mut || 1,
        );
        assert!(matches!(r, Step::Fail(_, Status::AuthFailure)));
    }

    fn admin() -> Chap {
        Chap {
            initiator: ChapSecret {
                user: "admin".into(),
                secret: "adminsecret0123".into(),
            },
            target: Some(ChapSecret {
                user: "boot-server".into(),
                secret: "adminreverse0123".into(),
            }),
        }
    }

    /// A whole CHAP login (security, operational, full feature) to `first`'s target
    /// or discovery, as `user` with `secret`; the Negotiated, or the failure status.
    fn login(
        lookup: Lookup,
        admin: Option<Chap>,
        discovery_chaps: Vec<Chap>,
        first: &str,
        user: &str,
        secret: &str,
    ) -> Result<Negotiated, Status> {
        let lk = move |_: &str| lookup.clone();
        let mut l = Login::new("10.0.0.9".parse().unwrap(), Limits::default())
            .with_admin(admin, discovery_chaps);
        let fail = |r: Step| match r {
            Step::Fail(_, st) => Err(st),
            r => panic!("{r:?}"),
        };
        let r = l.step(&req(0, 1, false, first), &lk, &mut || 1);
        let Step::Reply(p) = r else { return fail(r) };
        if get(&p, "AuthMethod").as_deref() != Some("CHAP") {
            panic!("AuthMethod {:?}", get(&p, "AuthMethod"));
        }
        let r = l.step(&req(0, 1, false, "CHAP_A=5;"), &lk, &mut || 1);
        let Step::Reply(p) = r else { return fail(r) };
        let id: u8 = get(&p, "CHAP_I").unwrap().parse().unwrap();
        let ch = parse_chap_binary(&get(&p, "CHAP_C").unwrap()).unwrap();
        let resp = chap_response(id, secret.as_bytes(), &ch);
        let t = format!(
            "CHAP_N={user};CHAP_R={};CHAP_I=3;CHAP_C=0x0a0b0c0d;",
            hex(&resp)
        );
        let r = l.step(&req(0, 1, true, &t), &lk, &mut || 1);
        let Step::Reply(_) = r else { return fail(r) };
        match l.step(&req(1, 3, true, ""), &lk, &mut || 1) {
            Step::Done(_, n) => Ok(*n),
            r => fail(r),
        }
    }

    #[test]
    fn admin_credential_opens_every_target_and_nothing_else_does() {
        let normal = "InitiatorName=iqn.i;TargetName=iqn.x;AuthMethod=CHAP,None;";
        // The node's own target from its address: node or admin credential.
        let n = login(
            Lookup::Allowed(Some(chap())),
            Some(admin()),
            vec![],
            normal,
            "u",
            "initiatorsecret",
        )
        .unwrap();
        assert!(!n.admin);
        let n = login(
            Lookup::Allowed(Some(chap())),
            Some(admin()),
            vec![],
            normal,
            "admin",
            "adminsecret0123",
        )
        .unwrap();
        assert!(n.admin);
        assert_eq!(n.chap_user.as_deref(), Some("admin"));
        // From another address: the admin only, and only when an admin is configured.
        assert_eq!(
            login(
                Lookup::AdminOnly,
                Some(admin()),
                vec![],
                normal,
                "u",
                "initiatorsecret"
            )
            .unwrap_err(),
            Status::AuthFailure
        );
        assert!(
            login(
                Lookup::AdminOnly,
                Some(admin()),
                vec![],
                normal,
                "admin",
                "adminsecret0123"
            )
            .unwrap()
            .admin
        );
        assert_eq!(
            login(
                Lookup::AdminOnly,
                Some(admin()),
                vec![],
                normal,
                "admin",
                "wrongsecret01"
            )
            .unwrap_err(),
            Status::AuthFailure
        );
        assert_eq!(
            login(
                Lookup::AdminOnly,
                None,
                vec![],
                normal,
                "admin",
                "adminsecret0123"
            )
            .unwrap_err(),
            Status::NotFound
        );
        // Discovery preferring CHAP: the admin, or a visible target's credential.
        let disc = "InitiatorName=iqn.i;SessionType=Discovery;AuthMethod=CHAP,None;";
        assert!(
            login(
                Lookup::NotFound,
                Some(admin()),
                vec![chap()],
                disc,
                "admin",
                "adminsecret0123"
            )
            .unwrap()
            .admin
        );
        assert!(
            !login(
                Lookup::NotFound,
                Some(admin()),
                vec![chap()],
                disc,
                "u",
                "initiatorsecret"
            )
            .unwrap()
            .admin
        );
        assert_eq!(
            login(
                Lookup::NotFound,
                Some(admin()),
                vec![],
                disc,
                "u",
                "initiatorsecret"
            )
            .unwrap_err(),
            Status::AuthFailure
        );
    }

    #[test]
    fn chap_binary_forms() {
        assert_eq!(parse_chap_binary("0x0a0B"), Some(vec![10, 11]));
        assert_eq!(parse_chap_binary("0bAQID"), Some(vec![1, 2, 3]));
        assert_eq!(parse_chap_binary("12"), None);
        assert_eq!(parse_chap_binary("0xzz"), None);
    }
}

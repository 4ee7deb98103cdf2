//! The SCSI block device (SBC-3 / SPC-4 subset) a target's LUN 0 presents over a
//! `boot_disk::Disk`: CDB decoding, range and field checks, data building, and sense data
//! for everything refused. Transport-independent: the session hands in a CDB and the
//! Data-Out bytes and sends back what [`Reply`] holds.
//!
//! Supported: TEST UNIT READY, REQUEST SENSE, INQUIRY (standard, VPD 0x00 0x80 0x83
//! 0xb0 0xb1 0xb2), MODE SENSE 6/10 (caching, control, informational exceptions),
//! READ CAPACITY 10/16, GET LBA STATUS, READ/WRITE 6/10/12/16 (FUA), VERIFY 10/12/16,
//! WRITE AND VERIFY 10/12/16 (written with FUA),
//! WRITE SAME 10/16 (UNMAP, NDOB), UNMAP, SYNCHRONIZE CACHE 10/16 (= the disk's flush,
//! the same durability as NBD FLUSH), REPORT LUNS. Everything else: CHECK CONDITION,
//! ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE.

use std::io;

use boot_disk::Disk;

/// Logical block size presented to initiators.
pub const BLOCK: u64 = 512;
/// Largest READ/WRITE in blocks (VPD 0xb0 MAXIMUM TRANSFER LENGTH): 32 MiB, as NBD.
pub const MAX_TRANSFER_BLOCKS: u64 = 65536;
/// Largest WRITE SAME in blocks (VPD 0xb0 MAXIMUM WRITE SAME LENGTH): 1 GiB.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 2 * 1024 * 1024;
/// Largest UNMAP LBA count (VPD 0xb0).
pub const MAX_UNMAP_BLOCKS: u32 = 1024 * 1024;
/// Most UNMAP block descriptors in one command (VPD 0xb0).
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Unmap granularity in blocks (the overlay's 64 KiB chunk).
const UNMAP_GRANULARITY: u32 = (boot_disk::overlay::CHUNK / BLOCK) as u32;

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;

/// Sense key, additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

/// Sense keys used here.
pub mod key {
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x03;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x07;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0x0b;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0x0e;
}

impl Sense {
    const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Sense { key, asc, ascq }
    }
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB.
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST.
    pub const INVALID_FIELD_IN_PARAM: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const PARAM_LIST_LENGTH: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED.
    pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT (iSCSI length mismatch).
    pub const INVALID_FIELD_IN_IU: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x0e, 0x03);
    /// DATA PROTECT / WRITE PROTECTED.
    pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
    /// DATA PROTECT / SPACE ALLOCATION FAILED WRITE PROTECT.
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x07);
    /// MEDIUM ERROR / UNRECOVERED READ ERROR.
    pub const READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
    /// MEDIUM ERROR / WRITE ERROR.
    pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
    /// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION.
    pub const MISCOMPARE: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
    /// ABORTED COMMAND / DATA PHASE ERROR (bad Data-Out sequence).
    pub const DATA_PHASE_ERROR: Sense = Sense::new(key::ABORTED_COMMAND, 0x4b, 0x00);

    /// Fixed-format sense data (18 bytes, current error).
    pub fn fixed(&self) -> Vec<u8> {
        let mut s = vec![0u8; 18];
        s[0] = 0x70;
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

/// The result of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// SCSI status.
    pub status: u8,
    /// Data-In bytes (the command's full answer; the session clips it to the
    /// initiator's expected length and reports the residual).
    pub data: Vec<u8>,
    /// Sense data for CHECK CONDITION.
    pub sense: Option<Sense>,
}

impl Reply {
    fn good(data: Vec<u8>) -> Self {
        Reply {
            status: GOOD,
            data,
            sense: None,
        }
    }
    /// CHECK CONDITION with `sense`.
    pub fn check(sense: Sense) -> Self {
        Reply {
            status: CHECK_CONDITION,
            data: Vec::new(),
            sense: Some(sense),
        }
    }
}

/// Where a command's data goes, from its CDB alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// No data, or Data-In (the target sends).
    NoneOrIn,
    /// The command expects this many Data-Out bytes.
    Out(u64),
}

fn be16(b: &[u8]) -> u64 {
    u64::from(u16::from_be_bytes([b[0], b[1]]))
}
fn be32(b: &[u8]) -> u64 {
    u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Length of the CDB for `opcode` by its group code.
pub fn cdb_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// A decoded READ/WRITE/VERIFY-style block range.
#[derive(Debug, Clone, Copy)]
struct Range {
    lba: u64,
    blocks: u64,
    /// Byte 1 of the CDB (protect, DPO, FUA, BYTCHK bits); 0 for 6-byte CDBs.
    flags: u8,
}

fn range(cdb: &[u8]) -> Option<Range> {
    let op = *cdb.first()?;
    let c = |n: usize| cdb.get(..n);
    Some(match op {
        0x08 | 0x0a => {
            let c = c(6)?;
            let lba = (u64::from(c[1] & 0x1f) << 16) | be16(&c[2..4]);
            let blocks = if c[4] == 0 { 256 } else { u64::from(c[4]) };
            Range {
                lba,
                blocks,
                flags: 0,
            }
        }
        0x28 | 0x2a | 0x2e | 0x2f | 0x41 | 0x34 | 0x35 => {
            let c = c(10)?;
            Range {
                lba: be32(&c[2..6]),
                blocks: be16(&c[7..9]),
                flags: c[1],
            }
        }
        0xa8 | 0xaa | 0xae | 0xaf => {
            let c = c(12)?;
            Range {
                lba: be32(&c[2..6]),
                blocks: be32(&c[6..10]),
                flags: c[1],
            }
        }
        0x88 | 0x8a | 0x8e | 0x8f | 0x93 | 0x90 | 0x91 => {
            let c = c(16)?;
            Range {
                lba: be64(&c[2..10]),
                blocks: be32(&c[10..14]),
                flags: c[1],
            }
        }
        _ => return None,
    })
}

/// Data-Out bytes a command's CDB asks for (write-type commands), used to check the
/// initiator's Expected Data Transfer Length and to refuse before soliciting data.
pub fn transfer(cdb: &[u8]) -> Transfer {
    let Some(&op) = cdb.first() else {
        return Transfer::NoneOrIn;
    };
    match op {
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e => match range(cdb) {
            Some(r) => Transfer::Out(r.blocks * BLOCK),
            None => Transfer::NoneOrIn,
        },
        0x2f | 0xaf | 0x8f => match range(cdb) {
            Some(r) if r.flags & 0x06 == 0x02 => Transfer::Out(r.blocks * BLOCK),
            Some(r) if r.flags & 0x06 == 0x06 => Transfer::Out(BLOCK),
            _ => Transfer::NoneOrIn,
        },
        0x41 => Transfer::Out(BLOCK),
        0x93 if cdb.get(1).is_some_and(|f| f & 0x01 != 0) => Transfer::Out(0),
        0x93 => Transfer::Out(BLOCK),
        0x42 => match cdb.get(7..9) {
            Some(l) => Transfer::Out(be16(l)),
            None => Transfer::NoneOrIn,
        },
        _ => Transfer::NoneOrIn,
    }
}

/// LUN 0 of a target: a disk as a SCSI direct-access block device.
pub struct Lu {
    disk: Disk,
    /// Stable identity (serial number, device identifiers) derived from this name.
    name: String,
}

fn io_sense(e: &io::Error, write: bool) -> Sense {
    match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EROFS) => Sense::WRITE_PROTECTED,
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => Sense::SPACE_ALLOCATION_FAILED,
        _ if write => Sense::WRITE_ERROR,
        _ => Sense::READ_ERROR,
    }
}

fn clip(mut v: Vec<u8>, alloc: u64) -> Vec<u8> {
    v.truncate(alloc.min(v.len() as u64) as usize);
    v
}

impl Lu {
    /// LUN 0 serving `disk`; `name` (e.g. the overlay id) seeds its serial number.
    pub fn new(disk: Disk, name: &str) -> Self {
        Lu {
            disk,
            name: name.to_string(),
        }
    }

    /// The disk served.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.disk.size() / BLOCK
    }

    fn thin(&self) -> bool {
        !self.disk.read_only()
    }

    fn id_hash(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        Sha256::digest(self.name.as_bytes()).into()
    }

    fn serial(&self) -> String {
        self.id_hash()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn check_range(&self, r: &Range) -> Result<(), Sense> {
        match r.lba.checked_add(r.blocks) {
            Some(end) if end <= self.blocks() => Ok(()),
            _ => Err(Sense::LBA_OUT_OF_RANGE),
        }
    }

    /// Checks a write-type command before its data is solicited, so a command that
    /// will fail is answered at once.
    pub fn precheck(&self, cdb: &[u8]) -> Result<(), Sense> {
        let Some(&op) = cdb.first() else {
            return Err(Sense::INVALID_OPCODE);
        };
        match op {
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 => {
                let r = range(cdb).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
                if r.flags & 0xe0 != 0 {
                    return Err(Sense::INVALID_FIELD_IN_CDB);
                }
                if self.disk.read_only() {
                    return Err(Sense::WRITE_PROTECTED);
                }
                self.check_range(&r)
            }
            0x42 if self.disk.read_only() => Err(Sense::WRITE_PROTECTED),
            _ => Ok(()),
        }
    }

    /// Runs one command addressed to `lun` with its Data-Out bytes.
    pub fn execute(&self, lun: u64, cdb: &[u8], out: &[u8]) -> Reply {
        let Some(&op) = cdb.first() else {
            return Reply::check(Sense::INVALID_OPCODE);
        };
        if cdb.len() < cdb_len(op) {
            return Reply::check(Sense::INVALID_FIELD_IN_CDB);
        }
        if lun != 0 {
            return match op {
                0x12 => self.inquiry(cdb, false),
                0xa0 => self.report_luns(cdb),
                0x03 => self.request_sense(cdb),
                _ => Reply::check(Sense::LUN_NOT_SUPPORTED),
            };
        }
        let r = match op {
            0x00 => Ok(Reply::good(Vec::new())),
            0x03 => Ok(self.request_sense(cdb)),
            0x12 => Ok(self.inquiry(cdb, true)),
            0x1a | 0x5a => self.mode_sense(cdb),
            0x25 => self.read_capacity10(cdb),
            0x9e => match cdb[1] & 0x1f {
                0x10 => Ok(self.read_capacity16(cdb)),
                0x12 => self.get_lba_status(cdb),
                _ => Err(Sense::INVALID_FIELD_IN_CDB),
            },
            0x08 | 0x28 | 0xa8 | 0x88 => self.read(cdb),
            0x0a | 0x2a | 0xaa | 0x8a => self.write(cdb, out, false),
            // WRITE AND VERIFY: the data is on the medium (durable) before GOOD.
            0x2e | 0xae | 0x8e => self.write(cdb, out, true),
            0x2f | 0xaf | 0x8f => self.verify(cdb, out),
            0x41 | 0x93 => self.write_same(cdb, out),
            0x42 => self.unmap(cdb, out),
            0x35 | 0x91 => self.sync_cache(cdb),
            0xa0 => Ok(self.report_luns(cdb)),
            _ => Err(Sense::INVALID_OPCODE),
        };
        r.unwrap_or_else(Reply::check)
    }

    fn request_sense(&self, cdb: &[u8]) -> Reply {
        let alloc = u64::from(cdb[4]);
        let data = if cdb[1] & 0x01 != 0 {
            vec![0x72, 0, 0, 0, 0, 0, 0, 0]
        } else {
            let mut s = Sense::new(0, 0, 0).fixed();
            s[2] = 0;
            s
        };
        Reply::good(clip(data, alloc))
    }

    fn inquiry(&self, cdb: &[u8], present: bool) -> Reply {
        let evpd = cdb[1] & 0x01 != 0;
        let page = cdb[2];
        let alloc = be16(&cdb[3..5]);
        if cdb[1] & 0xfe != 0 || (!evpd && page != 0) {
            return Reply::check(Sense::INVALID_FIELD_IN_CDB);
        }
        let qual = if present { 0x00 } else { 0x7f };
        if !evpd {
            let mut d = vec![0u8; 96];
            d[0] = qual;
            d[2] = 0x06; // SPC-4
            d[3] = 0x12; // HISUP, response data format 2
            d[4] = (d.len() - 5) as u8;
            d[7] = 0x02; // CMDQUE
            d[8..16].copy_from_slice(b"BOOTSRV ");
            d[16..32].copy_from_slice(b"VIRTUAL DISK    ");
            d[32..36].copy_from_slice(b"0001");
            // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
            for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
                d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
            }
            return Reply::good(clip(d, alloc));
        }
        if !present {
            return Reply::check(Sense::LUN_NOT_SUPPORTED);
        }
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2],
            0x80 => self.serial().into_bytes(),
            0x83 => {
                let h = self.id_hash();
                let mut v = Vec::new();
                // NAA IEEE Registered Extended (type 3, NAA 6), locally made up OUI.
                v.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
                let mut naa = [0u8; 16];
                naa.copy_from_slice(&h[..16]);
                naa[0] = 0x60 | (naa[0] & 0x0f);
                v.extend_from_slice(&naa);
                // T10 vendor ID (type 1): vendor + serial.
                let t10 = format!("BOOTSRV {}", self.serial());
                v.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
                v.extend_from_slice(t10.as_bytes());
                v
            }
            0xb0 => {
                let mut v = vec![0u8; 60];
                v[0] = 0x01; // WSNZ: WRITE SAME with 0 blocks is refused
                v[2..4].copy_from_slice(&(UNMAP_GRANULARITY as u16).to_be_bytes());
                v[4..8].copy_from_slice(&(MAX_TRANSFER_BLOCKS as u32).to_be_bytes());
                v[8..12].copy_from_slice(&(2048u32).to_be_bytes());
                if self.thin() {
                    v[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                    v[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                    v[24..28].copy_from_slice(&UNMAP_GRANULARITY.to_be_bytes());
                }
                v[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
                v
            }
            0xb1 => {
                let mut v = vec![0u8; 60];
                v[1] = 0x01; // non-rotating medium
                v
            }
            0xb2 => {
                let mut v = vec![0u8; 4];
                if self.thin() {
                    v[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU LBPWS LBPWS10 LBPRZ
                    v[2] = 0x02; // thin provisioned
                }
                v
            }
            _ => return Reply::check(Sense::INVALID_FIELD_IN_CDB),
        };
        let mut d = vec![0x00, page];
        d.extend_from_slice(&(body.len() as u16).to_be_bytes());
        d.extend_from_slice(&body);
        Reply::good(clip(d, alloc))
    }

    fn mode_pages(&self, page: u8, sub: u8, pc: u8) -> Result<Vec<u8>, Sense> {
        let changeable = pc == 1;
        let caching = {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if !changeable {
                p[2] = 0x04; // WCE: writes are volatile until SYNCHRONIZE CACHE / FUA
            }
            p
        };
        let control = {
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if !changeable {
                p[3] = 0x10; // unrestricted reordering allowed
                p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
            }
            p
        };
        let iec = {
            let mut p = vec![0u8; 12];
            p[0] = 0x1c;
            p[1] = 0x0a;
            p
        };
        if sub != 0 && !(page == 0x3f && sub == 0xff) {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        Ok(match page {
            0x08 => caching,
            0x0a => control,
            0x1c => iec,
            0x3f => [caching, control, iec].concat(),
            _ => return Err(Sense::INVALID_FIELD_IN_CDB),
        })
    }

    fn mode_sense(&self, cdb: &[u8]) -> Result<Reply, Sense> {
        let six = cdb[0] == 0x1a;
        let dbd = cdb[1] & 0x08 != 0;
        let llbaa = !six && cdb[1] & 0x10 != 0;
        let pc = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        let sub = cdb[3];
        if pc == 3 {
            return Err(Sense::SAVING_NOT_SUPPORTED);
        }
        let pages = self.mode_pages(page, sub, pc)?;
        let dev_spec = if self.disk.read_only() { 0x90 } else { 0x10 }; // WP, DPOFUA
        let blocks = self.blocks();
        let desc: Vec<u8> = if dbd {
            Vec::new()
        } else if llbaa {
            let mut d = vec![0u8; 16];
            d[0..8].copy_from_slice(&blocks.to_be_bytes());
            d[12..16].copy_from_slice(&(BLOCK as u32).to_be_bytes());
            d
        } else {
            let mut d = vec![0u8; 8];
            let n = blocks.min(if six { 0xff_ffff } else { 0xffff_ffff });
            if six {
                d[1..4].copy_from_slice(&(n as u32).to_be_bytes()[1..]);
            } else {
                d[0..4].copy_from_slice(&(n as u32).to_be_bytes());
            }
            d[5..8].copy_from_slice(&(BLOCK as u32).to_be_bytes()[1..]);
            d
        };
        let mut d = Vec::new();
        if six {
            let len = 3 + desc.len() + pages.len();
            d.extend_from_slice(&[len.min(255) as u8, 0, dev_spec, desc.len() as u8]);
        } else {
            let len = 6 + desc.len() + pages.len();
            d.extend_from_slice(&(len as u16).to_be_bytes());
            d.extend_from_slice(&[0, dev_spec, u8::from(llbaa), 0]);
            d.extend_from_slice(&(desc.len() as u16).to_be_bytes());
        }
        d.extend_from_slice(&desc);
        d.extend_from_slice(&pages);
        let alloc = if six {
            u64::from(cdb[4])
        } else {
            be16(&cdb[7..9])
        };
        Ok(Reply::good(clip(d, alloc)))
    }

    fn read_capacity10(&self, cdb: &[u8]) -> Result<Reply, Sense> {
        let pmi = cdb[8] & 0x01 != 0;
        if !pmi && be32(&cdb[2..6]) != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let last = self.blocks().saturating_sub(1).min(0xffff_ffff) as u32;
        let mut d = last.to_be_bytes().to_vec();
        d.extend_from_slice(&(BLOCK as u32).to_be_bytes());
        Ok(Reply::good(d))
    }

    fn read_capacity16(&self, cdb: &[u8]) -> Reply {
        let alloc = be32(&cdb[10..14]);
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&(BLOCK as u32).to_be_bytes());
        if self.thin() {
            d[14] = 0x80 | 0x40; // LBPME, LBPRZ
        }
        Reply::good(clip(d, alloc))
    }

    fn get_lba_status(&self, cdb: &[u8]) -> Result<Reply, Sense> {
        let lba = be64(&cdb[2..10]);
        let alloc = be32(&cdb[10..14]);
        if lba >= self.blocks() {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        let mut d = vec![0u8; 8];
        let span = (self.blocks() - lba).min(1 << 24) * BLOCK;
        let mut pos = lba;
        let max_desc = (alloc.saturating_sub(8) / 16).clamp(1, 1024);
        for (len, hole) in self.disk.extents(lba * BLOCK, span) {
            if (d.len() as u64 - 8) / 16 >= max_desc {
                break;
            }
            let n = (len / BLOCK).min(0xffff_ffff);
            if n == 0 {
                continue;
            }
            let mut e = [0u8; 16];
            e[0..8].copy_from_slice(&pos.to_be_bytes());
            e[8..12].copy_from_slice(&(n as u32).to_be_bytes());
            e[12] = u8::from(hole && self.thin());
            d.extend_from_slice(&e);
            pos += n;
        }
        let plen = (d.len() - 4) as u32;
        d[0..4].copy_from_slice(&plen.to_be_bytes());
        Ok(Reply::good(clip(d, alloc)))
    }

    fn rw_range(&self, cdb: &[u8]) -> Result<Range, Sense> {
        let r = range(cdb).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
        if r.flags & 0xe0 != 0 {
            // RDPROTECT/WRPROTECT/VRPROTECT: no protection information here.
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        self.check_range(&r)?;
        if r.blocks > MAX_TRANSFER_BLOCKS {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        Ok(r)
    }

    fn read(&self, cdb: &[u8]) -> Result<Reply, Sense> {
        let r = self.rw_range(cdb)?;
        let mut buf = vec![0u8; (r.blocks * BLOCK) as usize];
        self.disk
            .read_at(&mut buf, r.lba * BLOCK)
            .map_err(|e| io_sense(&e, false))?;
        Ok(Reply::good(buf))
    }

    fn write(&self, cdb: &[u8], out: &[u8], verify: bool) -> Result<Reply, Sense> {
        if self.disk.read_only() {
            return Err(Sense::WRITE_PROTECTED);
        }
        let r = self.rw_range(cdb)?;
        // Fewer bytes than the CDB says only when the initiator's expected length was
        // shorter (an iSCSI residual overflow): only those are written (FCP-4 9.4.2 a).
        let len = ((r.blocks * BLOCK) as usize).min(out.len());
        let data = &out[..len];
        let fua = verify || r.flags & 0x08 != 0;
        self.disk
            .write_at(data, r.lba * BLOCK, fua)
            .map_err(|e| io_sense(&e, true))?;
        Ok(Reply::good(Vec::new()))
    }

    fn verify(&self, cdb: &[u8], out: &[u8]) -> Result<Reply, Sense> {
        let r = self.rw_range(cdb)?;
        let bytchk = (r.flags >> 1) & 0x03;
        if bytchk == 0 || r.blocks == 0 {
            return Ok(Reply::good(Vec::new()));
        }
        if bytchk == 2 {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut disk = vec![0u8; (r.blocks * BLOCK) as usize];
        self.disk
            .read_at(&mut disk, r.lba * BLOCK)
            .map_err(|e| io_sense(&e, false))?;
        let same = if bytchk == 1 {
            out.get(..disk.len()) == Some(&disk[..])
        } else {
            let pat = out
                .get(..BLOCK as usize)
                .ok_or(Sense::INVALID_FIELD_IN_IU)?;
            disk.chunks(BLOCK as usize).all(|b| b == pat)
        };
        if same {
            Ok(Reply::good(Vec::new()))
        } else {
            Err(Sense::MISCOMPARE)
        }
    }

    fn write_same(&self, cdb: &[u8], out: &[u8]) -> Result<Reply, Sense> {
        let r = range(cdb).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
        let sixteen = cdb[0] == 0x93;
        let unmap = r.flags & 0x08 != 0;
        let anchor = r.flags & 0x10 != 0;
        let ndob = sixteen && r.flags & 0x01 != 0;
        if r.flags & 0xe0 != 0 || anchor || (!sixteen && r.flags & 0x01 != 0) {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        if self.disk.read_only() {
            return Err(Sense::WRITE_PROTECTED);
        }
        if r.blocks == 0 || r.blocks > MAX_WRITE_SAME_BLOCKS {
            return Err(Sense::INVALID_FIELD_IN_CDB);
        }
        self.check_range(&r)?;
        let pat: &[u8] = if ndob {
            &[0u8; BLOCK as usize]
        } else {
            out.get(..BLOCK as usize)
                .ok_or(Sense::INVALID_FIELD_IN_IU)?
        };
        let off = r.lba * BLOCK;
        let len = r.blocks * BLOCK;
        let res = if pat.iter().all(|b| *b == 0) {
            // Zeros: whole chunks are deallocated when UNMAP is set, else written.
            self.disk.zero_at(off, len, !unmap, false)
        } else {
            let per = (MAX_TRANSFER_BLOCKS * BLOCK).min(len) as usize;
            let buf: Vec<u8> = pat.iter().copied().cycle().take(per).collect();
            let mut pos = 0u64;
            let mut res = Ok(());
            while pos < len && res.is_ok() {
                let n = (len - pos).min(per as u64) as usize;
                res = self.disk.write_at(&buf[..n], off + pos, false);
                pos += n as u64;
            }
            res
        };
        res.map_err(|e| io_sense(&e, true))?;
        Ok(Reply::good(Vec::new()))
    }

    fn unmap(&self, cdb: &[u8], out: &[u8]) -> Result<Reply, Sense> {
        if cdb[1] & 0x01 != 0 {
            return Err(Sense::INVALID_FIELD_IN_CDB); // ANCHOR
        }
        if self.disk.read_only() {
            return Err(Sense::WRITE_PROTECTED);
        }
        let plen = be16(&cdb[7..9]) as usize;
        if plen == 0 {
            return Ok(Reply::good(Vec::new()));
        }
        if plen < 8 || out.len() < plen {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let p = &out[..plen];
        let bdl = be16(&p[2..4]) as usize;
        if !bdl.is_multiple_of(16) || 8 + bdl > plen {
            return Err(Sense::PARAM_LIST_LENGTH);
        }
        let descs: Vec<(u64, u64)> = p[8..8 + bdl]
            .chunks(16)
            .map(|d| (be64(&d[0..8]), be32(&d[8..12])))
            .collect();
        if descs.len() as u64 > u64::from(MAX_UNMAP_DESCRIPTORS) {
            return Err(Sense::INVALID_FIELD_IN_PARAM);
        }
        for &(lba, n) in &descs {
            if n > u64::from(MAX_UNMAP_BLOCKS) {
                return Err(Sense::INVALID_FIELD_IN_PARAM);
            }
            self.check_range(&Range {
                lba,
                blocks: n,
                flags: 0,
            })?;
        }
        for (lba, n) in descs {
            if n == 0 {
                continue;
            }
            // Whole chunks are deallocated, partial ones zeroed: LBPRZ holds for all.
            self.disk
                .zero_at(lba * BLOCK, n * BLOCK, false, false)
                .map_err(|e| io_sense(&e, true))?;
        }
        Ok(Reply::good(Vec::new()))
    }

    fn sync_cache(&self, cdb: &[u8]) -> Result<Reply, Sense> {
        let r = range(cdb).ok_or(Sense::INVALID_FIELD_IN_CDB)?;
        // NUMBER OF BLOCKS 0 means "to the end"; a range past the end is refused.
        if r.lba > self.blocks() || (r.blocks > 0 && self.check_range(&r).is_err()) {
            return Err(Sense::LBA_OUT_OF_RANGE);
        }
        self.disk.flush().map_err(|e| io_sense(&e, true))?;
        Ok(Reply::good(Vec::new()))
    }

    fn report_luns(&self, cdb: &[u8]) -> Reply {
        let select = cdb[2];
        let alloc = be32(&cdb[6..10]);
        if alloc < 16 || !matches!(select, 0..=2) {
            return Reply::check(Sense::INVALID_FIELD_IN_CDB);
        }
        let mut d = vec![0u8; 8];
        d[3] = 8;
        if select != 1 {
            d.extend_from_slice(&[0u8; 8]);
        } else {
            d[3] = 0;
        }
        Reply::good(clip(d, alloc))
    }
}

/// Decodes the 8-byte LUN field (peripheral and flat addressing); None for formats
/// a single-LUN target never hands out.
pub fn decode_lun(f: [u8; 8]) -> u64 {
    match f[0] >> 6 {
        0 | 1 => (u64::from(f[0] & 0x3f) << 8) | u64::from(f[1]),
        _ => u64::MAX,
    }
}

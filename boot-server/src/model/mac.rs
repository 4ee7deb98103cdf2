//! `MacAddr`: the one MAC address type (parsing, canonical text, node ids).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address. Its canonical text is lowercase and
/// colon-separated (`52:54:00:12:34:ab`); it parses that form, dashes
/// (`52-54-00-12-34-ab`) and bare hex (`525400 1234ab`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six octets.
    pub fn octets(self) -> [u8; 6] {
        self.0
    }

    /// The stable node id derived from this MAC: `node-525400123456`.
    pub fn node_id(self) -> String {
        let hex: String = self.0.iter().map(|b| format!("{b:02x}")).collect();
        format!("node-{hex}")
    }

    /// pxelinux's `BOOTIF` value: `01-52-54-00-12-34-ab`.
    pub fn bootif(self) -> String {
        format!("01-{}", self.to_string().replace(':', "-"))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        boot_proto::write_mac(f, &self.0)
    }
}

/// OpenAPI: a MAC address is a string (`52:54:00:12:34:ab`; dashes and bare hex parse too).
impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::model::string_schema("A MAC address: 52:54:00:12:34:ab", "52:54:00:12:34:ab")
    }
}

impl utoipa::ToSchema for MacAddr {}

/// Why a text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadMac(pub String);

impl fmt::Display for BadMac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a MAC address: {:?}", self.0)
    }
}

impl std::error::Error for BadMac {}

impl FromStr for MacAddr {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Self, BadMac> {
        let bad = || BadMac(s.chars().take(64).collect());
        if s.chars()
            .any(|c| !(c.is_ascii_hexdigit() || c == ':' || c == '-'))
        {
            return Err(bad());
        }
        let hex: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        if hex.len() != 12 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            let pair = std::str::from_utf8(&hex[2 * i..2 * i + 2]).map_err(|_| bad())?;
            *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
        }
        Ok(MacAddr(mac))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let m = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0xab]);
        assert_eq!(m.to_string(), "52:54:00:12:34:ab");
        assert_eq!("52:54:00:12:34:AB".parse::<MacAddr>(), Ok(m));
        assert_eq!("52-54-00-12-34-ab".parse::<MacAddr>(), Ok(m));
        assert_eq!("5254001234ab".parse::<MacAddr>(), Ok(m));
        assert!("52:54:00:12:34".parse::<MacAddr>().is_err());
        assert!("52:54:00:12:34:zz".parse::<MacAddr>().is_err());
        assert_eq!(m.node_id(), "node-5254001234ab");
        assert_eq!(m.bootif(), "01-52-54-00-12-34-ab");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"52:54:00:12:34:ab\"");
    }
}

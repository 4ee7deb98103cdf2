//! Secrets: the one random-token helper, digests stored instead of tokens,
//! fingerprints logged instead of secrets, and constant-time comparison.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// `bytes` random bytes from the OS-seeded CSPRNG, as lowercase hex.
pub fn random_token(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex SHA-256 of a secret: what the store keeps instead of the secret.
pub fn digest(secret: &str) -> String {
    format!("{:x}", Sha256::digest(secret.as_bytes()))
}

/// A short, non-reversible name for a secret, safe to log: the first 8 hex
/// digits of its SHA-256.
pub fn fingerprint(secret: &str) -> String {
    digest(secret)[..8].to_string()
}

/// Compares two byte strings in time independent of their content (the
/// length may show, not where they differ).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

/// Minimum strength of an admin token: 128 bits, i.e. 32 hex digits or at
/// least 22 characters of a larger alphabet. Returns why a token is too weak.
pub fn check_admin_token(token: &str) -> Result<(), String> {
    let t = token.trim();
    if t.is_empty() {
        return Err("the admin token is empty".into());
    }
    let hex = t.bytes().all(|b| b.is_ascii_hexdigit());
    let bits = if hex {
        t.len() * 4
    } else {
        // Printable ASCII without spaces: at most ~6.5 bits per character.
        t.len() * 6
    };
    if bits < 128 {
        return Err(format!(
            "the admin token has about {bits} bits; at least 128 are needed \
             (32 hex digits, e.g. from `openssl rand -hex 16`), or leave admin_token unset \
             to have one generated into the state directory"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_strength() {
        let t = random_token(16);
        assert_eq!(t.len(), 32);
        assert!(check_admin_token(&t).is_ok());
        assert!(check_admin_token("").is_err());
        assert!(check_admin_token("short").is_err());
        assert!(check_admin_token(&"a".repeat(31)).is_err());
        assert_eq!(fingerprint("x").len(), 8);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}

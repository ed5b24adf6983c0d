//! How the examples show keys and numbers to people: short forms for
//! addresses in running text, the safety number in groups of five.

use sotto_core::SafetyNumber;
use sotto_messenger::{MessageId, UserAddress};

/// `1a2b3c4d…` — the first 8 hex digits of a user's identity key, enough to
/// tell people apart on screen (never for verification: use the safety number).
pub fn short_user(addr: &UserAddress) -> String {
    format!("{}…", &hex::encode(addr.user)[..8])
}

/// A message id's first 8 hex digits.
pub fn short_id(id: &MessageId) -> String {
    hex::encode(&id.0[..4])
}

/// The 60 digits as 12 groups of 5, in three lines of four groups, as both
/// people read them to each other.
pub fn safety_number_lines(n: &SafetyNumber) -> Vec<String> {
    let groups: Vec<&str> = n
        .digits()
        .as_bytes()
        .chunks(5)
        .filter_map(|c| std::str::from_utf8(c).ok())
        .collect();
    groups.chunks(4).map(|line| line.join(" ")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use sotto_core::IdentityKeyPair;

    #[test]
    fn safety_number_shows_every_digit_in_groups() {
        let a = IdentityKeyPair::generate(&mut rand_core::OsRng);
        let b = IdentityKeyPair::generate(&mut rand_core::OsRng);
        let n = SafetyNumber::compute(a.public(), b.public());
        let lines = safety_number_lines(&n);
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == 4 * 5 + 3));
        assert_eq!(lines.concat().replace(' ', ""), n.digits());
    }
}

//! Safety numbers: what two users compare (60 digits or a QR code) to be
//! sure no one sits between them. Computed by sotto-core; compared there in
//! constant time.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;

/// The safety number of two identities; both sides compute the same one.
#[derive(uniffi::Object)]
pub struct SafetyNumber(sotto_core::SafetyNumber);

impl From<sotto_core::SafetyNumber> for SafetyNumber {
    fn from(n: sotto_core::SafetyNumber) -> Self {
        Self(n)
    }
}

#[uniffi::export]
impl SafetyNumber {
    /// The safety number of two public identity keys (order does not matter).
    #[uniffi::constructor]
    pub fn of(identity_a: Vec<u8>, identity_b: Vec<u8>) -> Result<Arc<Self>> {
        let a = sotto_core::IdentityKey::from_bytes(&identity_a)?;
        let b = sotto_core::IdentityKey::from_bytes(&identity_b)?;
        Ok(Arc::new(Self(sotto_core::SafetyNumber::compute(&a, &b))))
    }

    /// The 60 digits, to show as 12 groups of 5.
    pub fn digits(&self) -> String {
        self.0.digits().to_owned()
    }

    /// The QR-code payload.
    pub fn scannable(&self) -> Vec<u8> {
        self.0.scannable().to_vec()
    }

    /// Whether a scanned QR payload matches (constant-time comparison).
    pub fn matches_scanned(&self, scanned: Vec<u8>) -> bool {
        self.0.matches_scanned(&scanned)
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

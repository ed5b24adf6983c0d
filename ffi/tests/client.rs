//! `SottoClient` input checks as the bindings call them, without a relay:
//! every bad argument is a typed error before any I/O, and a store opened
//! with the wrong key or without a user is refused precisely. (The
//! conversations over a real relay are the Kotlin `ClientTest`'s job.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sotto_ffi::{SottoClient, SottoError};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    // A plain executor, as the foreign side's: the exports bring their runtime.
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn bad_relay_addresses_and_keys_are_typed_errors() {
    // No tempfile dev-dependency: a unique path under the OS temp dir.
    let dir = std::env::temp_dir().join(format!("sotto-ffi-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("c.db").to_string_lossy().into_owned();
    for bad in ["", "localhost", "127.0.0.1:1/zz", "127.0.0.1:99999/00"] {
        let e = block_on(SottoClient::create(db.clone(), vec![1; 32], bad.into())).unwrap_err();
        assert!(
            matches!(e, SottoError::InvalidAddress { .. }),
            "{bad}: {e:?}"
        );
    }
    let relay = format!("127.0.0.1:1/{}", "00".repeat(32));
    let e = block_on(SottoClient::create(db.clone(), vec![1; 31], relay)).unwrap_err();
    assert!(matches!(e, SottoError::InvalidInput { .. }), "{e:?}");
    // An empty store holds no user.
    let e = block_on(SottoClient::open(db, vec![1; 32])).unwrap_err();
    assert!(matches!(e, SottoError::NoIdentity { .. }), "{e:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn core_and_messenger_errors_keep_their_variant() {
    let e = SottoError::from(sotto_messenger::Error::InvalidAddress("missing @relay"));
    assert_eq!(e.to_string(), "invalid address: missing @relay");
    assert!(matches!(
        SottoError::from(sotto_messenger::Error::Timeout),
        SottoError::Timeout { .. }
    ));
    assert!(matches!(
        SottoError::from(sotto_messenger::Error::UnknownUser),
        SottoError::UnknownUser { .. }
    ));
    // A core error inside a messenger error keeps its own variant.
    assert!(matches!(
        SottoError::from(sotto_messenger::Error::from(
            sotto_core::Error::DecryptFailed
        )),
        SottoError::DecryptFailed { .. }
    ));
}

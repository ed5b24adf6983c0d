//! `Debug` for the messages that hold secret keys, plaintext or a delivery
//! token (the relay's `Send`): the type
//! name only, never a field. prost's derived `Debug` (skipped for these in
//! build.rs) would print every byte of a chain key or a message into a log.

use core::fmt;

macro_rules! redacted {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        $(
            impl fmt::Debug for crate::$module::$ty {
                fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str(concat!(stringify!($ty), " { <redacted> }"))
                }
            }
        )*
    };
}

redacted!(
    store::IdentityRecord,
    store::SignedPrekeyRecord,
    store::KemPrekeyRecord,
    store::OneTimePrekeyRecord,
    store::SessionRecord,
    store::SendingChain,
    store::ReceivingChain,
    store::SkippedKeyRecord,
    client::ClientConfig,
    client::Content,
    client::Message,
    client::AttachmentRef,
    client::SentSync,
    client::OutboxItem,
    client::SentLogEntry,
    client::ClientEvent,
    client::LinkGrantBody,
    relay::Send,
    session::SenderKeyRecord,
    session::SkippedSenderKey,
    client::SenderKeyDistribution,
    client::OwnSenderKey,
    client::ReceivedSenderKeys,
    client::PendingSenderKey,
    client::GroupState,
    client::GroupRecord,
    client::GroupUpdate,
    client::GroupSync,
    client::GroupEvent,
    client::GroupChange,
    client::GroupAction,
    client::Fragment,
    client::GroupHead,
    client::GroupAvatar,
);

impl fmt::Debug for crate::client::group_action::Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::client::group_action::Action as A;
        f.write_str(match self {
            A::Add(_) => "Add(..)",
            A::Remove(_) => "Remove(..)",
            A::Promote(_) => "Promote(..)",
            A::Demote(_) => "Demote(..)",
            A::Rename(_) => "Rename(<redacted>)",
            A::Avatar(_) => "Avatar(<redacted>)",
        })
    }
}

/// The oneof enums of redacted messages lose prost's `Debug` too: show the
/// variant, never its content.
impl fmt::Debug for crate::client::client_event::Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::client::client_event::Kind as K;
        f.write_str(match self {
            K::Message(_) => "Message(<redacted>)",
            K::Receipt(_) => "Receipt(..)",
            K::DecryptFailed(_) => "DecryptFailed(..)",
            K::SessionReset(_) => "SessionReset",
            K::IdentityChanged(_) => "IdentityChanged",
            K::SentSync(_) => "SentSync(<redacted>)",
            K::NewDevice(_) => "NewDevice(..)",
            K::DeviceRemoved(_) => "DeviceRemoved(..)",
            K::Delivery(_) => "Delivery(..)",
            K::SendFailed(_) => "SendFailed(..)",
            K::MessageRequest(_) => "MessageRequest(<redacted>)",
            K::Group(_) => "Group(<redacted>)",
        })
    }
}

impl fmt::Debug for crate::client::content::Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::client::content::Body as B;
        f.write_str(match self {
            B::Message(_) => "Message(<redacted>)",
            B::Receipt(_) => "Receipt(..)",
            B::Retry(_) => "Retry(..)",
            B::SentSync(_) => "SentSync(<redacted>)",
            B::DeviceListChanged(_) => "DeviceListChanged(..)",
            B::DeliveryTokenUpdate(_) => "DeliveryTokenUpdate",
            B::GroupUpdate(_) => "GroupUpdate(<redacted>)",
            B::SenderKey(_) => "SenderKey(<redacted>)",
            B::GroupSync(_) => "GroupSync(<redacted>)",
            B::SenderKeyRequest(_) => "SenderKeyRequest(..)",
            B::Fragment(_) => "Fragment(<redacted>)",
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::{client, relay, store};

    #[test]
    fn secret_bearing_records_print_no_field() {
        let secret = vec![0xAB; 32];
        let shown = format!(
            "{:?} {:?} {:?} ",
            store::SessionRecord {
                root_key: secret.clone(),
                ..Default::default()
            },
            client::ClientConfig {
                account_secret: secret.clone(),
                ..Default::default()
            },
            client::Message {
                text: "attack at dawn".into(),
                ..Default::default()
            },
        ) + &format!(
            "{:?}",
            relay::Send {
                delivery_token: secret.clone(),
                ..Default::default()
            }
        );
        assert!(
            !shown.contains("171") && !shown.to_lowercase().contains("ab, "),
            "{shown}"
        );
        assert!(!shown.contains("attack"), "{shown}");
        assert!(shown.contains("SessionRecord { <redacted> }"), "{shown}");
    }
}

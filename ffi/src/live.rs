//! Presence and typing for Kotlin and Swift (PROTOCOL.md III.14): watch a
//! contact while its conversation is open, say when the user types, and
//! read the changes with `nextLiveEvent()`. Live events are not stored and
//! need no ack; `presence()` always tells the current state.

use std::sync::Arc;

use sotto_messenger as core;

use crate::client::{parse_user, SottoClient};
use crate::error::{Result, SottoError};
use crate::runtime::in_runtime;

/// What this device knows of a contact's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Presence {
    /// Not watched, or it never answered (offline since before the watch,
    /// or not sharing its presence with this user).
    Unknown,
    /// Some device of the contact said so less than 45 s ago.
    Online,
    /// It went offline (or silent for 45 s); when it was last known online.
    Offline {
        /// Unix milliseconds.
        last_seen_ms: u64,
    },
}

impl From<core::Presence> for Presence {
    fn from(p: core::Presence) -> Self {
        match p {
            core::Presence::Unknown => Presence::Unknown,
            core::Presence::Online => Presence::Online,
            core::Presence::Offline { last_seen_ms } => Presence::Offline { last_seen_ms },
        }
    }
}

/// A change of a contact's presence or typing.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum LiveEvent {
    /// A watched contact's presence changed.
    Presence {
        /// The contact's address.
        user: String,
        /// Its presence now.
        presence: Presence,
    },
    /// A contact started or stopped typing to this user.
    Typing {
        /// The contact's address.
        user: String,
        /// Whether it is typing now.
        typing: bool,
    },
}

impl From<core::LiveEvent> for LiveEvent {
    fn from(e: core::LiveEvent) -> Self {
        match e {
            core::LiveEvent::Presence { user, presence } => LiveEvent::Presence {
                user: user.to_string(),
                presence: presence.into(),
            },
            core::LiveEvent::Typing { user, typing } => LiveEvent::Typing {
                user: user.to_string(),
                typing,
            },
        }
    }
}

#[uniffi::export]
impl SottoClient {
    /// Watches `contact`'s presence while its conversation is open: asked
    /// now and every 30 s until `unwatchPresence`. Fails with `NotAccepted`
    /// for anyone but an accepted contact.
    pub fn watch_presence(&self, contact: String) -> Result<()> {
        let contact = parse_user(&contact)?;
        Ok(self.core()?.watch_presence(&contact)?)
    }

    /// Stops watching `contact` (its conversation closed).
    pub fn unwatch_presence(&self, contact: String) -> Result<()> {
        let contact = parse_user(&contact)?;
        self.core()?.unwatch_presence(&contact);
        Ok(())
    }

    /// What this device knows of `contact`'s presence now.
    pub fn presence(&self, contact: String) -> Result<Presence> {
        let contact = parse_user(&contact)?;
        Ok(self.core()?.presence(&contact).into())
    }

    /// Whether `contact` is typing to this user now.
    pub fn is_typing(&self, contact: String) -> Result<bool> {
        let contact = parse_user(&contact)?;
        Ok(self.core()?.is_typing(&contact))
    }

    /// The user types to `contact` (`true`: call it on every keystroke, it
    /// is throttled) or stopped (`false`: sent or cleared).
    pub fn set_typing(&self, contact: String, typing: bool) -> Result<()> {
        let contact = parse_user(&contact)?;
        Ok(self.core()?.set_typing(&contact, typing)?)
    }

    /// The user is present (`true`, app in the foreground) or away.
    pub fn set_present(&self, present: bool) -> Result<()> {
        self.core()?.set_present(present);
        Ok(())
    }

    /// Shares presence and typing with every accepted contact, or none.
    pub fn share_presence(&self, shared: bool) -> Result<()> {
        Ok(self.core()?.share_presence(shared)?)
    }

    /// Shares presence and typing with one contact, or hides them from it.
    pub fn share_presence_with(&self, contact: String, shared: bool) -> Result<()> {
        let contact = parse_user(&contact)?;
        Ok(self.core()?.share_presence_with(&contact, shared)?)
    }

    /// Waits for the next presence or typing change (changes that came
    /// while nobody waited are kept, up to 256). Fails with `Closed` once
    /// the client is shut down.
    pub async fn next_live_event(&self) -> Result<LiveEvent> {
        self.core()?;
        let live = Arc::clone(&self.live);
        in_runtime(self.until_closed(async move {
            let mut events = live.lock().await;
            events
                .next()
                .await
                .map(LiveEvent::from)
                .ok_or(SottoError::closed())
        }))?
        .await
    }
}

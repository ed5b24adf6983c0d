//! Group chats for Kotlin and Swift: create, change and leave groups, send
//! to them, and read their state (PROTOCOL.md III.12). Group ids are 32
//! bytes; members are user addresses as text.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use sotto_messenger as core;

use crate::client::{parse_user, SottoClient};
use crate::error::{Result, SottoError};
use crate::events::Attachment;
use crate::runtime::in_runtime;

/// A 32-byte group id from foreign bytes.
fn group_id(bytes: &[u8]) -> Result<core::GroupId> {
    bytes
        .try_into()
        .map(core::GroupId)
        .map_err(|_| SottoError::InvalidInput {
            reason: "a group id is 32 bytes".to_owned(),
        })
}

fn users(addresses: &[String]) -> Result<Vec<core::UserAddress>> {
    addresses.iter().map(|a| parse_user(a)).collect()
}

/// One member of a group.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupMember {
    /// Its user address.
    pub address: String,
    /// May change the group.
    pub admin: bool,
}

/// Where this device stands in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum GroupStatus {
    /// A member.
    Member,
    /// Invited by a user this user has not accepted: `acceptGroup` first.
    Invitation,
    /// No longer a member.
    Left,
}

/// How far a message got with one recipient user (its furthest device).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct UserDelivery {
    /// The 32-byte user id.
    pub user: Vec<u8>,
    /// The furthest state any of its devices reached.
    pub state: crate::events::DeliveryState,
}

/// A group as this device holds it.
#[derive(Clone, PartialEq, Eq, uniffi::Record)]
pub struct GroupInfo {
    /// Its 32-byte id.
    pub id: Vec<u8>,
    /// Its name.
    pub name: String,
    /// How many changes made it.
    pub version: u64,
    /// Its members.
    pub members: Vec<GroupMember>,
    /// Where this device stands.
    pub status: GroupStatus,
}

impl fmt::Debug for GroupInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The name is content: never in logs.
        f.debug_struct("GroupInfo")
            .field("version", &self.version)
            .field("name", &format_args!("<{} bytes>", self.name.len()))
            .field("members", &self.members.len())
            .field("status", &self.status)
            .finish()
    }
}

impl From<core::GroupInfo> for GroupInfo {
    fn from(g: core::GroupInfo) -> Self {
        Self {
            id: g.state.id.0.to_vec(),
            name: g.state.name.clone(),
            version: g.state.version,
            members: g
                .state
                .members
                .values()
                .map(|m| GroupMember {
                    address: m.address.to_string(),
                    admin: m.admin,
                })
                .collect(),
            status: match g.status {
                core::GroupStatus::Member => GroupStatus::Member,
                core::GroupStatus::Invitation => GroupStatus::Invitation,
                core::GroupStatus::Left => GroupStatus::Left,
            },
        }
    }
}

#[uniffi::export]
impl SottoClient {
    /// Creates a group named `name` with this user as its admin and the
    /// users at `members`; returns its 32-byte id. Past 1,000 members:
    /// `GroupTooLarge`.
    pub fn create_group(&self, name: String, members: Vec<String>) -> Result<Vec<u8>> {
        let members = users(&members)?;
        Ok(self.core()?.create_group(&name, &members)?.0.to_vec())
    }

    /// Adds members (admins only).
    pub fn add_group_members(&self, group_id: Vec<u8>, members: Vec<String>) -> Result<()> {
        let (id, members) = (self::group_id(&group_id)?, users(&members)?);
        Ok(self.core()?.add_group_members(id, &members)?)
    }

    /// Removes a member (admins only): the removed user's devices read
    /// nothing sent after.
    pub fn remove_group_member(&self, group_id: Vec<u8>, member: String) -> Result<()> {
        let (id, member) = (self::group_id(&group_id)?, parse_user(&member)?);
        Ok(self.core()?.remove_group_member(id, &member)?)
    }

    /// Leaves the group.
    pub fn leave_group(&self, group_id: Vec<u8>) -> Result<()> {
        Ok(self.core()?.leave_group(self::group_id(&group_id)?)?)
    }

    /// Renames the group (admins only).
    pub fn rename_group(&self, group_id: Vec<u8>, name: String) -> Result<()> {
        Ok(self
            .core()?
            .rename_group(self::group_id(&group_id)?, &name)?)
    }

    /// Makes `member` an admin, or an ordinary member (admins only; an
    /// admin cannot demote one senior to it).
    pub fn set_group_admin(&self, group_id: Vec<u8>, member: String, admin: bool) -> Result<()> {
        let (id, member) = (self::group_id(&group_id)?, parse_user(&member)?);
        Ok(self.core()?.set_group_admin(id, &member, admin)?)
    }

    /// Accepts an invitation from a user this user had not accepted.
    pub fn accept_group(&self, group_id: Vec<u8>) -> Result<()> {
        Ok(self.core()?.accept_group(self::group_id(&group_id)?)?)
    }

    /// Queues `text` to every member device of the group, encrypted once;
    /// returns the 16-byte message id.
    pub fn send_group_text(&self, group_id: Vec<u8>, text: String) -> Result<Vec<u8>> {
        let id = self::group_id(&group_id)?;
        Ok(self.core()?.send_group_text(id, &text)?.0.to_vec())
    }

    /// Encrypts and uploads the file at `path` once, and sends it to the
    /// group with `text`; returns the message id.
    pub async fn send_group_file(
        &self,
        group_id: Vec<u8>,
        text: String,
        path: String,
    ) -> Result<Vec<u8>> {
        let id = self::group_id(&group_id)?;
        let client = self.core()?;
        in_runtime(async move {
            let m = client
                .send_group_file(id, &text, &PathBuf::from(path))
                .await?;
            Ok(m.0.to_vec())
        })?
        .await
    }

    /// Sets the group's avatar to the image at `path` (encrypted and
    /// uploaded as any attachment), or removes it (`None`). Admins only.
    pub async fn set_group_avatar(&self, group_id: Vec<u8>, path: Option<String>) -> Result<()> {
        let id = self::group_id(&group_id)?;
        let client = self.core()?;
        in_runtime(async move {
            let path = path.map(PathBuf::from);
            Ok(client.set_group_avatar(id, path.as_deref()).await?)
        })?
        .await
    }

    /// The group's avatar, if it has one.
    pub fn group_avatar(&self, group_id: Vec<u8>) -> Result<Option<Arc<Attachment>>> {
        let id = self::group_id(&group_id)?;
        Ok(self
            .core()?
            .group_avatar(id)?
            .map(|a| Arc::new(Attachment(a))))
    }

    /// Downloads the group's avatar into `dest` (written only when complete
    /// and verified); returns its size. Only in a group this user is a
    /// member of.
    pub async fn download_group_avatar(&self, group_id: Vec<u8>, dest: String) -> Result<u64> {
        let id = self::group_id(&group_id)?;
        let client = self.core()?;
        in_runtime(async move {
            Ok(client
                .download_group_avatar(id, &PathBuf::from(dest))
                .await?)
        })?
        .await
    }

    /// Per-user delivery state of a message this device sent (for a group
    /// message: "read by 5 of 7"); users none of whose devices got it yet
    /// are absent.
    pub fn delivery_by_user(&self, message_id: Vec<u8>) -> Result<Vec<UserDelivery>> {
        let id = crate::events::message_id(&message_id)?;
        Ok(self
            .core()?
            .delivery_by_user(&id)?
            .into_iter()
            .map(|(user, state)| UserDelivery {
                user: user.to_vec(),
                state: state.into(),
            })
            .collect())
    }

    /// The group, if this device is (or was) in it.
    pub fn group(&self, group_id: Vec<u8>) -> Result<Option<GroupInfo>> {
        let id = self::group_id(&group_id)?;
        Ok(self.core()?.group(id)?.map(Into::into))
    }

    /// Every group this device is (or was) in.
    pub fn groups(&self) -> Result<Vec<GroupInfo>> {
        Ok(self.core()?.groups()?.into_iter().map(Into::into).collect())
    }
}

//! A group's state and the signed chain of changes that makes it: pure
//! functions, no store (PROTOCOL.md III.12).
//!
//! Every change names the hash of the change it follows and is signed by
//! its author device's identity, certified by the author's account key; it
//! applies only if its author is an admin of the state it follows (any
//! member may remove itself), and an admin removes or demotes only admins
//! junior to it (seniority: who became an admin first). Which of two
//! changes made at once wins is decided in [`super::history`].

use std::collections::BTreeMap;

use prost::Message as _;
use sha2::{Digest, Sha256};
use sotto_core::device::Statement;
use sotto_core::store::Store;
use sotto_core::Device;
use sotto_proto::client as pb;

use crate::engine::account::DeviceCertificate;
use crate::engine::address::UserAddress;
use crate::error::{Error, Result};

/// Most members a group may have.
pub const MAX_GROUP_MEMBERS: usize = 1_000;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME_BYTES: usize = 256;
/// Largest avatar reference (an encoded `GroupAvatar`), in bytes.
pub const MAX_AVATAR_BYTES: usize = 1_024;
/// Most actions in one change (a creation adds every first member).
pub const MAX_ACTIONS_PER_CHANGE: usize = MAX_GROUP_MEMBERS + 2;
/// Domain of the change hash.
pub const CHANGE_HASH_DOMAIN: &[u8] = b"Sotto_v1_GroupChangeHash";

/// A group's id: 32 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub [u8; 32]);

impl GroupId {
    pub(crate) fn from_slice(b: &[u8]) -> Result<Self> {
        b.try_into()
            .map(GroupId)
            .map_err(|_| Error::GroupRejected("group id is not 32 bytes"))
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId({})", hex::encode(self.0))
    }
}

/// One member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Who, and where to reach them.
    pub address: UserAddress,
    /// May change the group.
    pub admin: bool,
    /// For an admin: the version of the change that made it one (0 for the
    /// creator, 1 for the creation's other admins). Lower is more senior.
    pub admin_since: u64,
}

/// An author's seniority in a state: admins by `(admin_since, user id)`,
/// everyone else after every admin. Lower is more senior.
pub type Seniority = (u64, [u8; 32]);

/// A group's state after the change whose hash is `head`.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupState {
    /// The group.
    pub id: GroupId,
    /// How many changes made it (0: none yet).
    pub version: u64,
    /// Hash of the last change (32 zero bytes before the first).
    pub head: [u8; 32],
    /// Its name.
    pub name: String,
    /// An encoded attachment reference, or empty.
    pub avatar: Vec<u8>,
    /// Members by user id.
    pub members: BTreeMap<[u8; 32], Member>,
}

impl std::fmt::Debug for GroupState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The name and avatar are content: never in logs.
        f.debug_struct("GroupState")
            .field("id", &self.id)
            .field("version", &self.version)
            .field("head", &hex::encode(&self.head[..8]))
            .field("name", &format_args!("<{} bytes>", self.name.len()))
            .field("members", &self.members.len())
            .finish()
    }
}

impl GroupState {
    /// The state before the creating change.
    pub(crate) fn empty(id: GroupId) -> Self {
        GroupState {
            id,
            version: 0,
            head: [0; 32],
            name: String::new(),
            avatar: Vec::new(),
            members: BTreeMap::new(),
        }
    }

    /// True if `user` is a member.
    pub fn is_member(&self, user: &[u8; 32]) -> bool {
        self.members.contains_key(user)
    }

    /// True if `user` is an admin.
    pub fn is_admin(&self, user: &[u8; 32]) -> bool {
        self.members.get(user).is_some_and(|m| m.admin)
    }

    /// `user`'s seniority here (see [`Seniority`]).
    pub fn seniority(&self, user: &[u8; 32]) -> Seniority {
        match self.members.get(user) {
            Some(m) if m.admin => (m.admin_since, *user),
            _ => (u64::MAX, *user),
        }
    }

    /// Reads a state a peer (or the store) gave, checking every field.
    pub(crate) fn from_pb(s: &pb::GroupState) -> Result<Self> {
        let head: [u8; 32] = s
            .head
            .as_slice()
            .try_into()
            .map_err(|_| Error::GroupRejected("group head is not 32 bytes"))?;
        if s.members.len() > MAX_GROUP_MEMBERS {
            return Err(Error::GroupRejected("too many members"));
        }
        check_name_and_avatar(&s.name, &s.avatar)?;
        let mut members = BTreeMap::new();
        for m in &s.members {
            let address: UserAddress = m
                .address
                .parse()
                .map_err(|_| Error::GroupRejected("member address"))?;
            if members
                .insert(
                    address.user,
                    Member {
                        address,
                        admin: m.admin,
                        admin_since: if m.admin { m.admin_since } else { 0 },
                    },
                )
                .is_some()
            {
                return Err(Error::GroupRejected("member listed twice"));
            }
        }
        Ok(GroupState {
            id: GroupId::from_slice(&s.group_id)?,
            version: s.version,
            head,
            name: s.name.clone(),
            avatar: s.avatar.clone(),
            members,
        })
    }

    /// The stored (and sent) form; members sorted by user id.
    pub(crate) fn to_pb(&self) -> pb::GroupState {
        pb::GroupState {
            group_id: self.id.0.to_vec(),
            version: self.version,
            head: self.head.to_vec(),
            name: self.name.clone(),
            avatar: self.avatar.clone(),
            members: self
                .members
                .values()
                .map(|m| pb::GroupMember {
                    address: m.address.to_string(),
                    admin: m.admin,
                    admin_since: if m.admin { m.admin_since } else { 0 },
                })
                .collect(),
        }
    }

    /// The state `change` makes of this one, or why it may not apply.
    pub(crate) fn apply(&self, change: &VerifiedChange) -> Result<GroupState> {
        let c = &change.body;
        if c.group_id != self.id.0 {
            return Err(Error::GroupRejected("change of another group"));
        }
        if Some(c.version) != self.version.checked_add(1) || c.parent != self.head {
            return Err(Error::GroupRejected("change does not follow this state"));
        }
        if c.actions.is_empty() || c.actions.len() > MAX_ACTIONS_PER_CHANGE {
            return Err(Error::GroupRejected("change with no or too many actions"));
        }
        let author = change.author;
        let leaving = matches!(
            c.actions.as_slice(),
            [pb::GroupAction { action: Some(pb::group_action::Action::Remove(u)) }] if u.as_slice() == author
        );
        let mut next = self.clone();
        if self.version == 0 {
            // Creation: the author makes itself its first admin.
            let adds_self_as_admin = c.actions.iter().any(|a| match &a.action {
                Some(pb::group_action::Action::Add(m)) => m
                    .address
                    .parse::<UserAddress>()
                    .is_ok_and(|u| u.user == author && m.admin),
                _ => false,
            });
            if !adds_self_as_admin {
                return Err(Error::GroupRejected("creator is not its first admin"));
            }
        } else if !(self.is_admin(&author) || (leaving && self.is_member(&author))) {
            return Err(Error::GroupRejected("author is not an admin"));
        }
        // Seniority is the author's in the state the change follows: an admin
        // cannot remove or demote one senior to it.
        let rank = self.seniority(&author);
        for a in &c.actions {
            use pb::group_action::Action as A;
            match a.action.as_ref() {
                Some(A::Add(m)) => {
                    let address: UserAddress = m
                        .address
                        .parse()
                        .map_err(|_| Error::GroupRejected("member address"))?;
                    if next.members.contains_key(&address.user) {
                        return Err(Error::GroupRejected("added member is already one"));
                    }
                    let since = match (self.version, address.user == author) {
                        (0, true) => 0,
                        (0, false) => 1,
                        _ => c.version,
                    };
                    next.members.insert(
                        address.user,
                        Member {
                            address,
                            admin: m.admin,
                            admin_since: if m.admin { since } else { 0 },
                        },
                    );
                }
                Some(A::Remove(u)) | Some(A::Demote(u)) => {
                    let target = user_id(u)?;
                    if target != author && self.seniority(&target) <= rank {
                        return Err(Error::GroupRejected("an admin senior to the author"));
                    }
                    let removing = matches!(a.action, Some(A::Remove(_)));
                    match next.members.get_mut(&target) {
                        None => return Err(Error::GroupRejected("not a member")),
                        Some(m) if !removing => {
                            m.admin = false;
                            m.admin_since = 0;
                        }
                        Some(_) => {
                            next.members.remove(&target);
                        }
                    }
                }
                Some(A::Promote(u)) => match next.members.get_mut(&user_id(u)?) {
                    Some(m) if !m.admin => {
                        m.admin = true;
                        m.admin_since = c.version;
                    }
                    Some(_) => {}
                    None => return Err(Error::GroupRejected("not a member")),
                },
                Some(A::Rename(name)) => next.name = name.clone(),
                Some(A::Avatar(avatar)) => next.avatar = avatar.clone(),
                None => return Err(Error::GroupRejected("empty action")),
            }
        }
        if next.members.len() > MAX_GROUP_MEMBERS {
            return Err(Error::GroupRejected("too many members"));
        }
        check_name_and_avatar(&next.name, &next.avatar)?;
        next.version = c.version;
        next.head = change.hash;
        Ok(next)
    }
}

fn user_id(b: &[u8]) -> Result<[u8; 32]> {
    b.try_into()
        .map_err(|_| Error::GroupRejected("user id is not 32 bytes"))
}

fn check_name_and_avatar(name: &str, avatar: &[u8]) -> Result<()> {
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(Error::GroupRejected("group name too long"));
    }
    if avatar.len() > MAX_AVATAR_BYTES || (!avatar.is_empty() && read_avatar(avatar).is_err()) {
        return Err(Error::GroupRejected("invalid group avatar"));
    }
    Ok(())
}

/// A group's avatar: the relay holding the image's blob, and its reference.
pub(crate) fn read_avatar(
    avatar: &[u8],
) -> Result<(
    crate::engine::address::RelayAddress,
    crate::engine::events::AttachmentRef,
)> {
    let mut a = pb::GroupAvatar::decode(avatar).map_err(|_| Error::malformed("group avatar"))?;
    let relay = a.relay.parse()?;
    let attachment = a
        .attachment
        .as_ref()
        .ok_or(Error::malformed("group avatar"))
        .and_then(|r| crate::engine::events::AttachmentRef::from_bytes(&r.encode_to_vec()));
    if let Some(r) = a.attachment.as_mut() {
        zeroize::Zeroize::zeroize(&mut r.pointer);
    }
    Ok((relay, attachment?))
}

/// A change whose signature and certificate verified.
#[derive(Clone, Debug)]
pub(crate) struct VerifiedChange {
    pub(crate) signed: pb::SignedGroupChange,
    pub(crate) body: pb::GroupChange,
    pub(crate) hash: [u8; 32],
    pub(crate) author: [u8; 32],
    pub(crate) author_device: u32,
}

impl VerifiedChange {
    /// A change this device verified before it stored it (its store is
    /// authenticated): decoded, not verified again.
    pub(crate) fn stored(signed: &pb::SignedGroupChange) -> Result<Self> {
        let body =
            pb::GroupChange::decode(signed.body.as_slice()).map_err(|_| Error::corrupt("app"))?;
        Ok(VerifiedChange {
            hash: change_hash(&signed.body),
            author: user_id(&body.author_user).map_err(|_| Error::corrupt("app"))?,
            author_device: body.author_device,
            signed: signed.clone(),
            body,
        })
    }

    /// Checks the author's certificate (under the author user's account key)
    /// and the signature by the certified device identity.
    pub(crate) fn verify(signed: &pb::SignedGroupChange) -> Result<Self> {
        let body = pb::GroupChange::decode(signed.body.as_slice())
            .map_err(|_| Error::GroupRejected("undecodable change"))?;
        let author = user_id(&body.author_user)?;
        let cert = signed
            .author_certificate
            .as_ref()
            .ok_or(Error::GroupRejected("change without a certificate"))
            .and_then(|c| {
                DeviceCertificate::from_pb(c)
                    .map_err(|_| Error::GroupRejected("invalid author certificate"))
            })?;
        if cert.account != author || cert.device_id != body.author_device {
            return Err(Error::GroupRejected("certificate of another device"));
        }
        Statement::GroupChange
            .verify(&cert.identity, &signed.body, &signed.signature)
            .map_err(|_| Error::GroupRejected("bad change signature"))?;
        if body.parent.len() != 32 {
            return Err(Error::GroupRejected("parent hash is not 32 bytes"));
        }
        GroupId::from_slice(&body.group_id)?;
        Ok(VerifiedChange {
            hash: change_hash(&signed.body),
            author,
            author_device: body.author_device,
            signed: signed.clone(),
            body,
        })
    }

    /// The group it changes.
    pub(crate) fn group_id(&self) -> GroupId {
        GroupId(self.body.group_id.as_slice().try_into().unwrap_or([0; 32]))
    }

    /// The hash of the change it follows.
    pub(crate) fn parent(&self) -> [u8; 32] {
        self.body.parent.as_slice().try_into().unwrap_or([0; 32])
    }
}

/// `SHA-256("Sotto_v1_GroupChangeHash" || body)`.
pub(crate) fn change_hash(body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(CHANGE_HASH_DOMAIN);
    h.update(body);
    h.finalize().into()
}

/// Makes and signs this device's change of `state`.
pub(crate) fn sign_change<S: Store>(
    device: &Device<S>,
    certificate: &DeviceCertificate,
    state: &GroupState,
    actions: Vec<pb::GroupAction>,
    now_ms: u64,
) -> Result<VerifiedChange> {
    let version = state
        .version
        .checked_add(1)
        .ok_or(Error::GroupRejected("group version exhausted"))?;
    let body = pb::GroupChange {
        group_id: state.id.0.to_vec(),
        version,
        parent: state.head.to_vec(),
        author_user: certificate.account.to_vec(),
        author_device: certificate.device_id,
        actions,
        at_ms: now_ms,
    }
    .encode_to_vec();
    let signed = pb::SignedGroupChange {
        signature: device
            .sign_statement(Statement::GroupChange, &body)
            .to_vec(),
        body,
        author_certificate: Some(certificate.to_pb()),
    };
    VerifiedChange::verify(&signed)
}

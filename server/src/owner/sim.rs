//! A simulated shell for [`Owner`]: virtual time, an in-memory store built
//! from the batches the owner commits, and store reads and commits carried
//! out when the test says so. Interleavings the real shell leaves to the
//! scheduler (a lookup still under way while more sends arrive, a commit not
//! yet durable when a receipt comes in, two deletes that read the same
//! message) are chosen here, so the rules are tested deterministically.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use chat_protocol::pb::{self, ConversationKind, Role, server_frame::Body};
use chat_protocol::{ConversationId, ErrorCode, Seq, UserId, codec};
use hashbrown::HashMap;
use prost::Message;

use super::*;
use crate::records::{ConversationRecord, IdempotencyRecord, MemberRecord};
use crate::storage::writer::Op;
use crate::storage::{Ks, keys};

/// Idempotency keys the simulated owner remembers per conversation.
const KEYS_REMEMBERED: usize = 16;

/// A push as a recipient list and the decoded frame.
#[derive(Debug)]
struct Pushed {
    users: Vec<u64>,
    frame: pb::ServerFrame,
    ephemeral: bool,
}

/// A store read the owner asked for and the simulation has not answered.
#[derive(Debug)]
enum Read {
    Load(ConversationId, Option<Seq>),
    LookUp(ConversationId, Vec<(UserId, String)>),
}

struct Sim {
    owner: Owner,
    now_ms: u64,
    store: BTreeMap<(u8, Vec<u8>), Vec<u8>>,
    /// Answer store reads as soon as they are asked for.
    auto_read: bool,
    /// Commit entries as soon as they are output.
    auto_commit: bool,
    reads: VecDeque<Read>,
    commits: VecDeque<Pending>,
    /// Answers in the order they were sent.
    replies: Vec<(Origin, pb::ServerFrame)>,
    released: Vec<Origin>,
    pushes: Vec<Pushed>,
    notified: usize,
    next_id: u64,
    next_request: u64,
    /// Keep the media directory alive as long as the owner.
    _dir: tempfile::TempDir,
}

fn rules(dir: &std::path::Path) -> Rules {
    let media = crate::media::Media::open(dir, "http://127.0.0.1".into(), 60, 1 << 20, 1)
        .expect("media directory");
    Rules {
        max_message_bytes: 1024,
        max_group_members: 8,
        push_preview: false,
        push: crate::push::Push::disabled(),
        media: Arc::new(media),
    }
}

fn decode(frame: &Bytes) -> pb::ServerFrame {
    let (f, used) = codec::decode::<pb::ServerFrame>(frame, chat_protocol::DEFAULT_MAX_FRAME_BYTES)
        .expect("a valid frame")
        .expect("a whole frame");
    assert_eq!(used, frame.len(), "one frame per reply");
    f
}

fn sorted(users: &[u64]) -> Vec<u64> {
    let mut v = users.to_vec();
    v.sort_unstable();
    v
}

impl Sim {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let owner = Owner::new(0, HashMap::new(), KEYS_REMEMBERED, rules(dir.path()));
        Self {
            owner,
            now_ms: 1_000_000,
            store: BTreeMap::new(),
            auto_read: true,
            auto_commit: true,
            reads: VecDeque::new(),
            commits: VecDeque::new(),
            replies: Vec::new(),
            released: Vec::new(),
            pushes: Vec::new(),
            notified: 0,
            next_id: 100,
            next_request: 1,
            _dir: dir,
        }
    }

    /// A new owner over the same store, as after a restart.
    fn restart(&mut self) {
        self.drain();
        assert!(self.commits.is_empty() && self.reads.is_empty());
        self.owner = Owner::new(0, HashMap::new(), KEYS_REMEMBERED, rules(self._dir.path()));
    }

    fn put(&mut self, ks: Ks, key: &[u8], value: Vec<u8>) {
        self.store.insert((ks as u8, key.to_vec()), value);
    }

    fn get(&self, ks: Ks, key: &[u8]) -> Option<&Vec<u8>> {
        self.store.get(&(ks as u8, key.to_vec()))
    }

    /// Entries of `ks` whose key starts with `prefix`.
    fn scan<'a>(
        &'a self,
        ks: Ks,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a [u8], &'a Vec<u8>)> + 'a {
        self.store
            .range((ks as u8, prefix.to_vec())..)
            .take_while(move |((k, key), _)| *k == ks as u8 && key.starts_with(prefix))
            .map(|((_, key), v)| (key.as_slice(), v))
    }

    /// A conversation as the catalog creates it, with `members` and their
    /// roles, written to the store.
    fn create(&mut self, kind: ConversationKind, members: &[(u64, Role)]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let record = ConversationRecord {
            kind: kind as i32,
            title: "sim".into(),
            created_at_ms: self.now_ms,
            created_by: members.first().map_or(0, |m| m.0),
        };
        self.put(Ks::Conversations, &keys::id(id), record.encode_to_vec());
        for &(user, role) in members {
            let m = MemberRecord {
                role: role as i32,
                ..Default::default()
            };
            self.put(Ks::Members, &keys::pair(id, user), m.encode_to_vec());
        }
        id
    }

    /// A group owned by 1, with 2 an admin and 3, 4 members.
    fn group(&mut self) -> u64 {
        self.create(
            ConversationKind::Group,
            &[
                (1, Role::Owner),
                (2, Role::Admin),
                (3, Role::Member),
                (4, Role::Member),
            ],
        )
    }

    fn request(&mut self, user: u64, conversation: u64, op: OwnerOp) -> u64 {
        let request_id = self.next_request;
        self.next_request += 1;
        self.request_as(user, conversation, request_id, op);
        request_id
    }

    fn request_as(&mut self, user: u64, conversation: u64, request_id: u64, op: OwnerOp) {
        let origin = Origin {
            shard: 0,
            session: user,
            request_id,
        };
        let req = OwnerRequest::new(origin, UserId(user), ConversationId(conversation), op);
        self.owner.handle_request(self.now_ms, req);
        self.drain();
    }

    fn send(&mut self, user: u64, conversation: u64, cmid: &str, first_attempt: bool) -> u64 {
        let msg = pb::SendMessage {
            conversation_id: conversation,
            client_msg_id: cmid.into(),
            text: format!("text of {cmid}"),
            first_attempt,
            ..Default::default()
        };
        self.request(user, conversation, OwnerOp::Send(msg))
    }

    /// DeleteMessage of `seq` by `user`, with `target` as the route read
    /// it from the store.
    fn delete(
        &mut self,
        user: u64,
        conversation: u64,
        seq: u64,
        target: Option<pb::Message>,
    ) -> u64 {
        let target = target.map(Box::new);
        self.request(user, conversation, OwnerOp::DeleteMessage { seq, target })
    }

    /// EditMessage of `seq` by `user` to `text`, with `target` as the
    /// route read it from the store.
    fn edit(
        &mut self,
        user: u64,
        conversation: u64,
        seq: u64,
        text: &str,
        target: Option<pb::Message>,
    ) -> u64 {
        let op = OwnerOp::EditMessage {
            seq,
            text: text.into(),
            target: target.map(Box::new),
        };
        self.request(user, conversation, op)
    }

    /// React by `user`, with the message and its reaction records read from
    /// the store now, as the route does.
    fn react(&mut self, user: u64, conversation: u64, seq: u64, emoji: &str, remove: bool) -> u64 {
        let r = self.reacting(user, conversation, seq, emoji, remove);
        self.request(user, conversation, OwnerOp::React(Box::new(r)))
    }

    fn reacting(
        &self,
        user: u64,
        conversation: u64,
        seq: u64,
        emoji: &str,
        remove: bool,
    ) -> crate::owner::Reacting {
        crate::owner::Reacting {
            seq,
            emoji: emoji.into(),
            remove,
            target: self.stored_message(conversation, seq).map(Box::new),
            counts: self.reaction_counts(conversation, seq),
            mine: self
                .get(Ks::Reactors, &keys::reactor(conversation, seq, user))
                .and_then(|v| crate::records::UserReactions::decode(v.as_slice()).ok())
                .unwrap_or_default(),
        }
    }

    /// (emoji, count) of message `seq` as stored.
    fn reaction_counts(&self, conversation: u64, seq: u64) -> crate::records::ReactionCounts {
        self.get(Ks::Reactions, &keys::pair(conversation, seq))
            .and_then(|v| crate::records::ReactionCounts::decode(v.as_slice()).ok())
            .unwrap_or_default()
    }

    fn counts_of(&self, conversation: u64, seq: u64) -> Vec<(String, u32)> {
        self.reaction_counts(conversation, seq)
            .counts
            .into_iter()
            .map(|c| (c.emoji, c.count))
            .collect()
    }

    /// Reaction events pushed, in push order.
    fn reaction_events(&self) -> Vec<(&[u64], &pb::ReactionEvent)> {
        self.pushes
            .iter()
            .filter_map(|p| match &p.frame.body {
                Some(Body::ReactionEvent(e)) => Some((p.users.as_slice(), e)),
                _ => None,
            })
            .collect()
    }

    /// Messages pushed as edited, in push order.
    fn edits(&self) -> Vec<(&[u64], &pb::Message)> {
        self.pushes
            .iter()
            .filter_map(|p| match &p.frame.body {
                Some(Body::MessageEdited(pb::MessageEdited { message: Some(m) })) => {
                    Some((p.users.as_slice(), m))
                }
                _ => None,
            })
            .collect()
    }

    /// Takes the owner's outputs until it has none, carrying out those the
    /// simulation is set to carry out at once.
    fn drain(&mut self) {
        loop {
            while let Some(out) = self.owner.poll_output() {
                match out {
                    Output::Commit(_, p) => self.commits.push_back(p),
                    Output::Load {
                        conversation,
                        recovered_seq,
                    } => self
                        .reads
                        .push_back(Read::Load(conversation, recovered_seq)),
                    Output::LookUp { conversation, keys } => {
                        self.reads.push_back(Read::LookUp(conversation, keys))
                    }
                }
            }
            let mut progressed = false;
            if self.auto_commit && !self.commits.is_empty() {
                self.commit_all_now();
                progressed = true;
            }
            if self.auto_read && !self.reads.is_empty() {
                self.answer_reads_now(None);
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    /// Commits every entry output so far, in order, as the shell's commit
    /// loop does.
    fn commit_all(&mut self) {
        self.commit_all_now();
        self.drain();
    }

    fn commit_all_now(&mut self) {
        while let Some(p) = self.commits.pop_front() {
            for op in p.batch.ops() {
                match op {
                    Op::Put(ks, k, v) => {
                        self.store.insert((ks as u8, k.to_vec()), v.to_vec());
                    }
                    Op::Delete(ks, k) => {
                        self.store.remove(&(ks as u8, k.to_vec()));
                    }
                }
            }
            for effect in p.effects {
                match effect {
                    Effect::Durable { conversation, seq } => {
                        self.owner.handle_durable(conversation, seq)
                    }
                    Effect::Reply(origin, frame) => self.replies.push((origin, decode(&frame))),
                    Effect::Release(origin) => self.released.push(origin),
                    Effect::Fanout(users, frame) => self.pushes.push(Pushed {
                        users: sorted(&users),
                        frame: decode(&frame),
                        ephemeral: false,
                    }),
                    Effect::Ephemeral(users, frame) => self.pushes.push(Pushed {
                        users: sorted(&users),
                        frame: decode(&frame),
                        ephemeral: true,
                    }),
                    Effect::Notify(..) => self.notified += 1,
                }
            }
        }
    }

    /// Answers the store reads asked for so far from the simulated store
    /// (or with `failure`).
    fn answer_reads(&mut self, failure: Option<Refusal>) {
        self.answer_reads_now(failure);
        self.drain();
    }

    fn answer_reads_now(&mut self, failure: Option<Refusal>) {
        while let Some(read) = self.reads.pop_front() {
            match read {
                Read::Load(id, recovered) => {
                    let loaded = match &failure {
                        Some(f) => Err(f.clone()),
                        None => Ok(self.load(id.get(), recovered.map(Seq::get))),
                    };
                    self.owner.handle_loaded(self.now_ms, id, loaded);
                }
                Read::LookUp(id, keys) => {
                    let found = match &failure {
                        Some(f) => Err(f.clone()),
                        None => Ok(keys
                            .into_iter()
                            .filter_map(|(sender, cmid)| {
                                let v = self.get(
                                    Ks::Idempotency,
                                    &keys::idempotency(id.get(), sender.get(), &cmid),
                                )?;
                                let rec = IdempotencyRecord::decode(v.as_slice()).ok()?;
                                Some((sender, cmid, rec))
                            })
                            .collect()),
                    };
                    self.owner.handle_keys(self.now_ms, id, found);
                }
            }
        }
    }

    fn load(&self, id: u64, recovered: Option<u64>) -> Option<Loaded> {
        let record =
            ConversationRecord::decode(self.get(Ks::Conversations, &keys::id(id))?.as_slice())
                .ok()?;
        let prefix = keys::id(id);
        let members: Vec<(u64, MemberRecord)> = self
            .scan(Ks::Members, &prefix)
            .filter_map(|(k, v)| {
                Some((
                    keys::pair_second(k)?,
                    MemberRecord::decode(v.as_slice()).ok()?,
                ))
            })
            .collect();
        let last_seq = recovered.unwrap_or_else(|| {
            self.scan(Ks::Messages, &prefix)
                .filter_map(|(k, _)| keys::message_seq(k))
                .max()
                .unwrap_or(0)
        });
        let blocked_by = members
            .iter()
            .map(|(u, _)| *u)
            .filter(|&u| {
                record.kind == ConversationKind::Direct as i32
                    && members.iter().any(|(other, _)| {
                        *other != u && self.get(Ks::Blocks, &keys::pair(u, *other)).is_some()
                    })
            })
            .collect();
        let banned = self
            .scan(Ks::Bans, &prefix)
            .filter_map(|(k, _)| keys::pair_second(k))
            .collect();
        Some(Loaded {
            record,
            members,
            last_seq,
            blocked_by,
            banned,
        })
    }

    /// Moves virtual time on and lets the owner's timers run.
    fn advance(&mut self, ms: u64) {
        self.now_ms += ms;
        self.owner.handle_tick(self.now_ms);
        self.drain();
    }

    /// The answer to request `rid`; exactly one must have been sent.
    fn answer(&self, rid: u64) -> &Body {
        let mut answers = self
            .replies
            .iter()
            .filter(|(o, _)| o.request_id == rid)
            .map(|(_, f)| f.body.as_ref().expect("a body"));
        let first = answers
            .next()
            .unwrap_or_else(|| panic!("no answer to {rid}"));
        assert!(answers.next().is_none(), "two answers to {rid}");
        first
    }

    fn answered(&self, rid: u64) -> bool {
        self.replies.iter().any(|(o, _)| o.request_id == rid)
    }

    fn error_code(&self, rid: u64) -> ErrorCode {
        match self.answer(rid) {
            Body::Error(e) => ErrorCode::try_from(e.code).expect("a known code"),
            other => panic!("{rid} was answered with {other:?}, not an error"),
        }
    }

    fn ack(&self, rid: u64) -> &pb::SendAck {
        match self.answer(rid) {
            Body::SendAck(a) => a,
            other => panic!("{rid} was answered with {other:?}, not an ack"),
        }
    }

    fn conversation(&self, rid: u64) -> &pb::Conversation {
        match self.answer(rid) {
            Body::Conversation(c) => c,
            other => panic!("{rid} was answered with {other:?}, not a conversation"),
        }
    }

    /// Messages pushed to members, in push order.
    fn messages(&self) -> Vec<(&[u64], &pb::Message)> {
        self.pushes
            .iter()
            .filter_map(|p| match &p.frame.body {
                Some(Body::MessagePush(pb::MessagePush { message: Some(m) })) => {
                    Some((p.users.as_slice(), m))
                }
                _ => None,
            })
            .collect()
    }

    fn system_events(&self) -> Vec<pb::SystemEvent> {
        self.messages()
            .into_iter()
            .filter_map(|(_, m)| m.system.clone())
            .collect()
    }

    fn member(&self, conversation: u64, user: u64) -> Option<MemberRecord> {
        let v = self.get(Ks::Members, &keys::pair(conversation, user))?;
        MemberRecord::decode(v.as_slice()).ok()
    }

    fn stored_message(&self, conversation: u64, seq: u64) -> Option<pb::Message> {
        let v = self.get(Ks::Messages, &keys::message(conversation, seq))?;
        pb::Message::decode(v.as_slice()).ok()
    }

    fn role_in(c: &pb::Conversation, user: u64) -> Option<Role> {
        c.members
            .iter()
            .find(|m| m.user_id == user)
            .map(|m| Role::try_from(m.role).unwrap_or(Role::Unspecified))
    }
}

// Roles.

#[test]
fn members_cannot_manage_members_and_admins_cannot_touch_the_owner() {
    let mut s = Sim::new();
    let g = s.group();
    let by_member = s.request(3, g, OwnerOp::AddMembers(vec![9]));
    assert_eq!(s.error_code(by_member), ErrorCode::Forbidden);
    let remove_owner = s.request(2, g, OwnerOp::RemoveMember(1));
    assert_eq!(s.error_code(remove_owner), ErrorCode::Forbidden);
    let set_role = s.request(2, g, OwnerOp::SetRole(3, Role::Admin as i32));
    assert_eq!(
        s.error_code(set_role),
        ErrorCode::Forbidden,
        "only the owner sets roles"
    );
    let outsider = s.request(9, g, OwnerOp::RemoveMember(3));
    assert_eq!(s.error_code(outsider), ErrorCode::NotAMember);
    let owner_leaves = s.request(1, g, OwnerOp::Leave);
    assert_eq!(s.error_code(owner_leaves), ErrorCode::Conflict);
    assert!(s.pushes.is_empty(), "refusals change nothing");

    // An admin removes a member; the member hears it as its last message.
    let removed = s.request(2, g, OwnerOp::RemoveMember(4));
    let view = s.conversation(removed);
    assert_eq!(Sim::role_in(view, 4), None);
    assert_eq!(s.member(g, 4), None, "the removal is written");
    let [(hearing, m)] = s.messages()[..] else {
        panic!("one system message");
    };
    assert_eq!(hearing, &[1, 2, 3, 4]);
    assert_eq!(m.seq, 1);
    assert_eq!(
        m.system.as_ref().map(|e| e.kind),
        Some(pb::system_event::Kind::MemberRemoved as i32)
    );

    // Only the owner removes an admin.
    s.request(1, g, OwnerOp::SetRole(3, Role::Admin as i32));
    let admin_removes_admin = s.request(2, g, OwnerOp::RemoveMember(3));
    assert_eq!(s.error_code(admin_removes_admin), ErrorCode::Forbidden);
    let owner_removes_admin = s.request(1, g, OwnerOp::RemoveMember(3));
    assert_eq!(Sim::role_in(s.conversation(owner_removes_admin), 3), None);
    // Removing oneself is leaving, answered with Done: the conversation is
    // no longer the user's to see.
    let leaves = s.request(2, g, OwnerOp::RemoveMember(2));
    assert!(matches!(s.answer(leaves), Body::Done(_)));
    let kinds: Vec<i32> = s.system_events().iter().map(|e| e.kind).collect();
    use pb::system_event::Kind;
    assert_eq!(
        kinds,
        [
            Kind::MemberRemoved as i32,
            Kind::RoleChanged as i32,
            Kind::MemberRemoved as i32,
            Kind::MemberLeft as i32
        ]
    );
}

#[test]
fn ownership_moves_with_transfer_only() {
    let mut s = Sim::new();
    let g = s.group();
    let direct_to_owner = s.request(1, g, OwnerOp::SetRole(1, Role::Admin as i32));
    assert_eq!(s.error_code(direct_to_owner), ErrorCode::Forbidden);
    let bad_role = s.request(1, g, OwnerOp::SetRole(3, Role::Owner as i32));
    assert_eq!(s.error_code(bad_role), ErrorCode::InvalidArgument);
    let to_outsider = s.request(1, g, OwnerOp::TransferOwnership(9));
    assert_eq!(s.error_code(to_outsider), ErrorCode::InvalidArgument);

    let promoted = s.request(1, g, OwnerOp::SetRole(3, Role::Admin as i32));
    assert_eq!(Sim::role_in(s.conversation(promoted), 3), Some(Role::Admin));
    let again = s.request(1, g, OwnerOp::SetRole(3, Role::Admin as i32));
    assert!(matches!(s.answer(again), Body::Conversation(_)));
    assert_eq!(
        s.system_events().len(),
        1,
        "an unchanged role writes nothing"
    );

    let moved = s.request(1, g, OwnerOp::TransferOwnership(3));
    let view = s.conversation(moved);
    assert_eq!(Sim::role_in(view, 3), Some(Role::Owner));
    assert_eq!(Sim::role_in(view, 1), Some(Role::Admin));
    let old_owner_sets = s.request(1, g, OwnerOp::SetRole(4, Role::Admin as i32));
    assert_eq!(s.error_code(old_owner_sets), ErrorCode::Forbidden);

    // What the owner wrote is what a restarted owner loads.
    s.restart();
    let after = s.request(3, g, OwnerOp::SetRole(4, Role::Admin as i32));
    let view = s.conversation(after);
    assert_eq!(Sim::role_in(view, 3), Some(Role::Owner));
    assert_eq!(Sim::role_in(view, 1), Some(Role::Admin));
    assert_eq!(Sim::role_in(view, 4), Some(Role::Admin));
    let kinds: Vec<i32> = s.system_events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            pb::system_event::Kind::RoleChanged as i32,
            pb::system_event::Kind::OwnershipTransferred as i32,
            pb::system_event::Kind::RoleChanged as i32,
        ]
    );
    let seqs: Vec<u64> = s.messages().iter().map(|(_, m)| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3], "seqs continue after the restart");
}

#[test]
fn direct_chats_have_no_admins_and_cannot_be_left() {
    let mut s = Sim::new();
    let d = s.create(
        ConversationKind::Direct,
        &[(1, Role::Member), (2, Role::Member)],
    );
    let add = s.request(1, d, OwnerOp::AddMembers(vec![3]));
    assert_eq!(s.error_code(add), ErrorCode::InvalidArgument);
    let leave = s.request(1, d, OwnerOp::Leave);
    assert_eq!(s.error_code(leave), ErrorCode::InvalidArgument);
    let title = s.request(2, d, OwnerOp::UpdateTitle("x".into()));
    assert_eq!(s.error_code(title), ErrorCode::InvalidArgument);
    assert!(s.pushes.is_empty());
}

#[test]
fn groups_stop_at_the_member_limit() {
    let mut s = Sim::new();
    let g = s.group();
    let too_many = s.request(1, g, OwnerOp::AddMembers((10..15).collect()));
    assert_eq!(s.error_code(too_many), ErrorCode::MemberLimit);
    let fits = s.request(2, g, OwnerOp::AddMembers(vec![10, 11, 11, 3, 12, 13]));
    let view = s.conversation(fits);
    assert_eq!(view.members.len(), 8, "duplicates and members are skipped");
    let [(hearing, m)] = s.messages()[..] else {
        panic!("one system message");
    };
    assert_eq!(
        hearing,
        &[1, 2, 3, 4, 10, 11, 12, 13],
        "new members hear it"
    );
    assert_eq!(s.member(g, 12).map(|r| r.joined_seq), Some(m.seq));
}

#[test]
fn channels_take_posts_from_admins_only() {
    let mut s = Sim::new();
    let c = s.create(ConversationKind::Channel, &[(1, Role::Owner)]);
    let sub = s.request(5, c, OwnerOp::SubscribeChannel);
    assert!(matches!(s.answer(sub), Body::Done(_)));
    let post = s.send(5, c, "p", true);
    assert_eq!(s.error_code(post), ErrorCode::Forbidden);
    let post = s.send(1, c, "p", true);
    assert_eq!(s.ack(post).seq, 1);
    let [(hearing, _)] = s.messages()[..] else {
        panic!("one post");
    };
    assert_eq!(hearing, &[1, 5]);
}

// Sends and idempotency.

#[test]
fn sends_are_sequenced_and_refused_without_a_seq() {
    let mut s = Sim::new();
    let g = s.group();
    let a = s.send(3, g, "a", true);
    let outsider = s.send(9, g, "x", true);
    let empty_id = s.send(3, g, "", true);
    let long_id = s.send(3, g, &"k".repeat(CLIENT_MSG_ID_MAX + 1), true);
    let big = s.request(
        3,
        g,
        OwnerOp::Send(pb::SendMessage {
            conversation_id: g,
            client_msg_id: "big".into(),
            text: "x".repeat(1025),
            ..Default::default()
        }),
    );
    let b = s.send(4, g, "b", true);
    assert_eq!(s.error_code(outsider), ErrorCode::NotAMember);
    assert_eq!(s.error_code(empty_id), ErrorCode::InvalidArgument);
    assert_eq!(s.error_code(long_id), ErrorCode::InvalidArgument);
    assert_eq!(s.error_code(big), ErrorCode::MessageTooLarge);
    assert_eq!((s.ack(a).seq, s.ack(b).seq), (1, 2), "refusals take no seq");
    let stored = s.stored_message(g, 2).expect("stored");
    assert_eq!((stored.sender_id, stored.text.as_str()), (4, "text of b"));
    let missing = s.send(3, 999, "m", true);
    assert_eq!(s.error_code(missing), ErrorCode::NotFound);
}

#[test]
fn a_retry_in_memory_is_acked_with_the_original_seq_after_its_commit() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "k", true); // loads the conversation
    s.auto_commit = false;
    let first = s.send(3, g, "k2", true);
    let retry = s.send(3, g, "k2", false);
    let other_sender = s.send(4, g, "k2", true);
    assert!(!s.answered(first) && !s.answered(retry));
    s.commit_all();
    let order: Vec<u64> = s.replies.iter().map(|(o, _)| o.request_id).collect();
    assert_eq!(
        order[1..],
        [first, retry, other_sender],
        "answers in arrival order"
    );
    assert_eq!((s.ack(first).seq, s.ack(first).duplicate), (2, false));
    assert_eq!((s.ack(retry).seq, s.ack(retry).duplicate), (2, true));
    assert_eq!(s.ack(retry).message_id, s.ack(first).message_id);
    assert_eq!(s.ack(other_sender).seq, 3, "keys are per sender");
    assert_eq!(s.messages().len(), 3, "a duplicate is not pushed again");
}

#[test]
fn a_forgotten_key_is_found_in_the_store_before_later_sends_are_sequenced() {
    let mut s = Sim::new();
    let g = s.group();
    let first = s.send(3, g, "old", true);
    let original = s.ack(first).clone();
    for i in 0..2 * KEYS_REMEMBERED {
        s.send(4, g, &format!("n{i}"), true);
    }
    let last_seq = 1 + 2 * KEYS_REMEMBERED as u64;

    s.auto_read = false;
    let retry = s.send(3, g, "old", false);
    let behind = s.send(4, g, "after", true);
    let [Read::LookUp(conv, keys)] = &s.reads.iter().collect::<Vec<_>>()[..] else {
        panic!("one lookup: {:?}", s.reads);
    };
    assert_eq!(
        (*conv, keys.as_slice()),
        (ConversationId(g), &[(UserId(3), "old".to_owned())][..])
    );
    assert!(
        !s.answered(retry) && !s.answered(behind),
        "nothing passes the lookup"
    );

    s.answer_reads(None);
    let dup = s.ack(retry);
    assert!(dup.duplicate);
    assert_eq!(
        (dup.seq, dup.message_id, dup.sent_at_ms),
        (original.seq, original.message_id, original.sent_at_ms)
    );
    assert_eq!(
        s.ack(behind).seq,
        last_seq + 1,
        "the send behind it keeps its place"
    );
    let n = s.replies.len();
    assert_eq!(
        [s.replies[n - 2].0.request_id, s.replies[n - 1].0.request_id],
        [retry, behind]
    );

    // A retransmission whose key the store does not hold is new.
    s.auto_read = true;
    let unknown = s.send(3, g, "never-sent", false);
    assert_eq!(
        (s.ack(unknown).seq, s.ack(unknown).duplicate),
        (last_seq + 2, false)
    );
}

#[test]
fn a_failed_lookup_refuses_what_waited_for_it_and_loses_nothing_after() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    s.auto_read = false;
    let waiting = s.send(3, g, "unknown", false);
    // Arrives while the lookup is under way: not covered by it.
    let behind = s.send(4, g, "b", true);
    s.answer_reads(Some(Refusal::new(ErrorCode::StorageFailure, "disk")));
    assert_eq!(s.error_code(waiting), ErrorCode::StorageFailure);
    assert_eq!(s.ack(behind).seq, 2, "the refused send took no seq");
    let n = s.replies.len();
    assert_eq!(
        [s.replies[n - 2].0.request_id, s.replies[n - 1].0.request_id],
        [waiting, behind]
    );
    s.auto_read = true;
    let retried = s.send(3, g, "unknown", false);
    assert_eq!((s.ack(retried).seq, s.ack(retried).duplicate), (3, false));
}

#[test]
fn a_failed_load_refuses_every_queued_request() {
    let mut s = Sim::new();
    let g = s.group();
    s.auto_read = false;
    let a = s.send(3, g, "a", true);
    let b = s.request(1, g, OwnerOp::UpdateTitle("t".into()));
    assert_eq!(s.reads.len(), 1, "one load for everything queued");
    s.answer_reads(Some(Refusal::new(ErrorCode::StorageFailure, "disk")));
    assert_eq!(s.error_code(a), ErrorCode::StorageFailure);
    assert_eq!(s.error_code(b), ErrorCode::StorageFailure);
    s.auto_read = true;
    let again = s.send(3, g, "a", false);
    assert_eq!(s.ack(again).seq, 1);
}

// Receipts.

#[test]
fn cursors_only_move_forward_and_never_past_what_is_durable() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    s.send(3, g, "b", true);
    s.auto_commit = false;
    s.send(3, g, "c", true); // seq 3, not yet durable
    let read = s.request(4, g, OwnerOp::MarkRead(3));
    s.commit_all();
    assert!(matches!(s.answer(read), Body::Done(_)));
    let m = s.member(g, 4).expect("member");
    assert_eq!(
        (m.read_seq, m.delivered_seq),
        (2, 2),
        "clamped to the durable seq"
    );
    let events: Vec<&pb::ReceiptEvent> = s
        .pushes
        .iter()
        .filter_map(|p| match &p.frame.body {
            Some(Body::ReceiptEvent(e)) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].user_id, events[0].seq, events[0].at_ms),
        (4, 2, s.now_ms)
    );

    s.auto_commit = true;
    let back = s.request(4, g, OwnerOp::MarkRead(1));
    assert!(matches!(s.answer(back), Body::Done(_)));
    let delivered_behind = s.request(4, g, OwnerOp::MarkDelivered(1));
    assert!(matches!(s.answer(delivered_behind), Body::Done(_)));
    assert_eq!(
        s.pushes
            .iter()
            .filter(|p| matches!(p.frame.body, Some(Body::ReceiptEvent(_))))
            .count(),
        1,
        "a cursor moving back tells no one"
    );
    let outsider = s.request(9, g, OwnerOp::MarkRead(1));
    assert_eq!(s.error_code(outsider), ErrorCode::NotAMember);

    // Delivered cursors are written by the periodic flush, and a receipt
    // with request id 0 is not answered.
    s.request_as(3, g, 0, OwnerOp::MarkDelivered(3));
    assert_eq!(s.released.len(), 1);
    assert!(!s.answered(0));
    assert_eq!(
        s.member(g, 3).map(|m| m.delivered_seq),
        Some(0),
        "not written yet"
    );
    s.advance(CURSOR_FLUSH_INTERVAL.as_millis() as u64);
    assert_eq!(s.member(g, 3).map(|m| m.delivered_seq), Some(3));

    let counts = s.request(3, g, OwnerOp::GetReceipts(2));
    let Body::ReceiptCounts(c) = s.answer(counts) else {
        panic!("counts");
    };
    assert_eq!((c.read_count, c.delivered_count), (1, 2));
}

// Deletes.

#[test]
fn two_deletes_that_read_the_message_before_either_wrote_make_one_event() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    // Both requests read the message from the store before either commit,
    // which a socket test cannot arrange for certain.
    let target = s.stored_message(g, 1).expect("stored");
    s.auto_commit = false;
    let by_sender = s.delete(3, g, 1, Some(target.clone()));
    let by_admin = s.delete(2, g, 1, Some(target.clone()));
    s.commit_all();
    assert!(matches!(s.answer(by_sender), Body::Done(_)));
    assert!(matches!(s.answer(by_admin), Body::Done(_)));
    let deleted: Vec<u64> = s
        .system_events()
        .iter()
        .filter(|e| e.kind == pb::system_event::Kind::MessageDeleted as i32)
        .map(|e| e.target_seq)
        .collect();
    assert_eq!(deleted, [1], "one MESSAGE_DELETED event");
    let stored = s.stored_message(g, 1).expect("stored");
    assert!(stored.deleted && stored.text.is_empty());
    s.auto_commit = true;

    // After a restart the owner no longer remembers the deletion; the
    // store's copy says it is deleted.
    s.restart();
    let late = s.delete(1, g, 1, Some(stored));
    assert!(matches!(s.answer(late), Body::Done(_)));
    assert_eq!(s.system_events().len(), 1);
}

#[test]
fn deletes_follow_sender_and_admin_rules() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    let target = s.stored_message(g, 1);
    let by_member = s.delete(4, g, 1, target.clone());
    assert_eq!(s.error_code(by_member), ErrorCode::Forbidden);
    let missing = s.delete(3, g, 7, None);
    assert_eq!(s.error_code(missing), ErrorCode::NotFound);
    let removed = s.request(1, g, OwnerOp::RemoveMember(4));
    let system = s.stored_message(g, 2);
    assert!(matches!(s.answer(removed), Body::Conversation(_)));
    let of_system = s.delete(1, g, 2, system);
    assert_eq!(s.error_code(of_system), ErrorCode::InvalidArgument);
    let d = s.create(
        ConversationKind::Direct,
        &[(1, Role::Member), (2, Role::Member)],
    );
    s.send(1, d, "x", true);
    let in_direct = s.delete(2, d, 1, s.stored_message(d, 1));
    assert_eq!(
        s.error_code(in_direct),
        ErrorCode::Forbidden,
        "no admins in direct chats"
    );
}

// Typing.

#[test]
fn typing_reaches_the_others_and_runs_out_in_virtual_time() {
    let mut s = Sim::new();
    let g = s.group();
    s.request(3, g, OwnerOp::Typing(true));
    s.advance(TYPING_DEBOUNCE_MS / 2);
    s.request(3, g, OwnerOp::Typing(true)); // within the debounce
    let typing: Vec<(&[u64], bool)> = s
        .pushes
        .iter()
        .filter_map(|p| match &p.frame.body {
            Some(Body::TypingEvent(e)) if p.ephemeral => Some((p.users.as_slice(), e.active)),
            _ => None,
        })
        .collect();
    assert_eq!(typing, [(&[1, 2, 4][..], true)]);
    assert_eq!(s.released.len(), 2, "typing is never answered");
    assert!(s.replies.is_empty());

    s.advance(TYPING_TTL_MS - 1);
    assert_eq!(s.pushes.len(), 1, "refreshed half-way, not run out yet");
    s.advance(TYPING_DEBOUNCE_MS);
    let Some(Body::TypingEvent(e)) = &s.pushes[1].frame.body else {
        panic!("a typing event");
    };
    assert!(!e.active && e.user_id == 3);
    s.advance(TYPING_TTL_MS * 2);
    assert_eq!(s.pushes.len(), 2, "withdrawn once");

    let outsider = s.request(9, g, OwnerOp::Typing(true));
    assert!(!s.answered(outsider));
    assert_eq!(s.pushes.len(), 2, "non-members' typing reaches no one");
}

#[test]
fn receipt_events_in_large_groups_reach_the_reader_and_recent_senders() {
    let mut s = Sim::new();
    let mut members = vec![(1, Role::Owner)];
    members.extend((2..=RECEIPT_EVENTS_MAX_MEMBERS as u64 + 1).map(|u| (u, Role::Member)));
    let g = s.create(ConversationKind::Group, &members);
    s.send(2, g, "a", true);
    s.send(3, g, "b", true);
    s.send(4, g, "c", true);
    s.request(5, g, OwnerOp::MarkRead(2));
    let hearing = s
        .pushes
        .iter()
        .find(|p| matches!(p.frame.body, Some(Body::ReceiptEvent(_))))
        .map(|p| p.users.clone());
    assert_eq!(hearing, Some(vec![2, 3, 5]));
}

// Edits.

#[test]
fn the_sender_edits_in_place_without_a_seq_and_every_member_is_told() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    let before = s.stored_message(g, 1).expect("stored");
    s.now_ms += 5;
    let e = s.edit(3, g, 1, "fixed", Some(before.clone()));
    assert!(matches!(s.answer(e), Body::Done(_)));
    let stored = s.stored_message(g, 1).expect("stored");
    assert_eq!(stored.text, "fixed");
    assert_eq!(stored.edited_at_ms, s.now_ms);
    assert_eq!(
        (stored.seq, stored.message_id, stored.sent_at_ms),
        (before.seq, before.message_id, before.sent_at_ms)
    );
    let edits = s.edits();
    assert_eq!(edits.len(), 1);
    assert_eq!(edits[0].0, &[1, 2, 3, 4]);
    assert_eq!(edits[0].1.text, "fixed");
    assert_eq!(s.notified, 0, "no push notification");
    // No seq was taken: the next message is seq 2.
    let next = s.send(4, g, "b", true);
    assert_eq!(s.ack(next).seq, 2);
    // A second edit, even one that read the message at the same instant,
    // is strictly later.
    let again = s.edit(3, g, 1, "fixed again", s.stored_message(g, 1));
    assert!(matches!(s.answer(again), Body::Done(_)));
    let twice = s.stored_message(g, 1).expect("stored");
    assert_eq!(twice.text, "fixed again");
    assert!(twice.edited_at_ms > stored.edited_at_ms);
}

#[test]
fn edits_are_refused_for_others_system_deleted_and_bad_text() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    let target = s.stored_message(g, 1);
    // Not even the group's owner edits someone else's message.
    let by_owner = s.edit(1, g, 1, "x", target.clone());
    assert_eq!(s.error_code(by_owner), ErrorCode::Forbidden);
    let outsider = s.edit(9, g, 1, "x", target.clone());
    assert_eq!(s.error_code(outsider), ErrorCode::NotAMember);
    let missing = s.edit(3, g, 7, "x", None);
    assert_eq!(s.error_code(missing), ErrorCode::NotFound);
    let empty = s.edit(3, g, 1, "", target.clone());
    assert_eq!(s.error_code(empty), ErrorCode::InvalidArgument);
    let big = s.edit(3, g, 1, &"x".repeat(1025), target.clone());
    assert_eq!(s.error_code(big), ErrorCode::MessageTooLarge);
    let removed = s.request(1, g, OwnerOp::RemoveMember(4));
    assert!(matches!(s.answer(removed), Body::Conversation(_)));
    let system = s.stored_message(g, 2);
    let of_system = s.edit(1, g, 2, "x", system);
    assert_eq!(s.error_code(of_system), ErrorCode::InvalidArgument);
    assert!(s.edits().is_empty());
    assert_eq!(s.stored_message(g, 1).expect("stored").text, "text of a");

    // A delete and an edit that both read the message before either was
    // written: the edit does not bring the text back.
    s.auto_commit = false;
    let deleted = s.delete(3, g, 1, target.clone());
    let late = s.edit(3, g, 1, "resurrected", target);
    s.commit_all();
    assert!(matches!(s.answer(deleted), Body::Done(_)));
    assert_eq!(s.error_code(late), ErrorCode::Conflict);
    s.auto_commit = true;
    let stored = s.stored_message(g, 1).expect("stored");
    assert!(stored.deleted && stored.text.is_empty());
    // And after a restart the store's copy says it is deleted.
    s.restart();
    let after = s.edit(3, g, 1, "again", Some(stored));
    assert_eq!(s.error_code(after), ErrorCode::Conflict);
    assert!(s.edits().is_empty());
}

// Reactions.

#[test]
fn reactions_count_per_emoji_are_idempotent_and_take_no_seq() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    for (user, emoji) in [(1, "👍"), (2, "👍"), (3, "🎉"), (1, "👍")] {
        let r = s.react(user, g, 1, emoji, false);
        assert!(matches!(s.answer(r), Body::Done(_)));
    }
    assert_eq!(
        s.counts_of(g, 1),
        [("👍".to_owned(), 2), ("🎉".to_owned(), 1)],
        "adding twice counts once"
    );
    let events = s.reaction_events();
    assert_eq!(events.len(), 3, "the repeated add tells nobody");
    assert_eq!(events[0].0, &[1, 2, 3, 4]);
    assert_eq!((events[2].1.user_id, events[2].1.emoji.as_str()), (3, "🎉"));
    // Removing: the count drops, an emoji nobody uses goes, removing what
    // one does not have is done with nothing written.
    let r = s.react(1, g, 1, "👍", true);
    assert!(matches!(s.answer(r), Body::Done(_)));
    let r = s.react(3, g, 1, "🎉", true);
    assert!(matches!(s.answer(r), Body::Done(_)));
    let r = s.react(4, g, 1, "🎉", true);
    assert!(matches!(s.answer(r), Body::Done(_)));
    assert_eq!(s.counts_of(g, 1), [("👍".to_owned(), 1)]);
    assert_eq!(s.reaction_events().len(), 5);
    assert!(s.get(Ks::Reactors, &keys::reactor(g, 1, 3)).is_none());
    assert_eq!(s.notified, 0);
    let next = s.send(4, g, "b", true);
    assert_eq!(s.ack(next).seq, 2, "reactions take no seq");
}

#[test]
fn reactions_read_before_the_owner_wrote_are_counted_from_what_it_wrote() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    // Three members react at once: every request read the store before
    // any was written, which a socket test cannot arrange for certain.
    let reads: Vec<_> = [1, 2, 4]
        .iter()
        .map(|&u| (u, s.reacting(u, g, 1, "👍", false)))
        .collect();
    s.auto_commit = false;
    let rids: Vec<u64> = reads
        .into_iter()
        .map(|(u, r)| s.request(u, g, OwnerOp::React(Box::new(r))))
        .collect();
    // And one of them adds the same reaction again, read at the same time.
    let again = s.reacting(1, g, 1, "👍", false);
    let twice = s.request(1, g, OwnerOp::React(Box::new(again)));
    s.commit_all();
    s.auto_commit = true;
    for rid in rids.into_iter().chain([twice]) {
        assert!(matches!(s.answer(rid), Body::Done(_)));
    }
    assert_eq!(s.counts_of(g, 1), [("👍".to_owned(), 3)]);
}

#[test]
fn reactions_are_bounded_and_refused_for_bad_targets() {
    let mut s = Sim::new();
    let g = s.group();
    s.send(3, g, "a", true);
    for i in 0..REACTIONS_PER_MESSAGE_MAX {
        let r = s.react(1 + (i as u64 % 4), g, 1, &format!("e{i}"), false);
        assert!(matches!(s.answer(r), Body::Done(_)), "{i}");
    }
    let past = s.react(2, g, 1, "one-more", false);
    assert_eq!(s.error_code(past), ErrorCode::ReactionLimit);
    // An emoji already there still counts another user.
    let existing = s.react(2, g, 1, "e0", false);
    assert!(matches!(s.answer(existing), Body::Done(_)));
    assert_eq!(s.counts_of(g, 1).len(), REACTIONS_PER_MESSAGE_MAX);

    let before = s.reaction_events().len();
    let long = "x".repeat(REACTION_MAX_BYTES + 1);
    let cases = [
        (s.react(9, g, 1, "👍", false), ErrorCode::NotAMember),
        (s.react(1, g, 1, "", false), ErrorCode::InvalidArgument),
        (s.react(1, g, 1, &long, false), ErrorCode::InvalidArgument),
        (s.react(1, g, 1, "a b", false), ErrorCode::InvalidArgument),
        (s.react(1, g, 1, "\u{7}", false), ErrorCode::InvalidArgument),
        (s.react(1, g, 7, "👍", false), ErrorCode::NotFound),
    ];
    for (rid, code) in cases {
        assert_eq!(s.error_code(rid), code);
    }
    let removed = s.request(1, g, OwnerOp::RemoveMember(4));
    assert!(matches!(s.answer(removed), Body::Conversation(_)));
    let system = s.react(1, g, 2, "👍", false);
    assert_eq!(s.error_code(system), ErrorCode::InvalidArgument);
    let target = s.stored_message(g, 1);
    let deleted = s.delete(3, g, 1, target);
    assert!(matches!(s.answer(deleted), Body::Done(_)));
    let on_deleted = s.react(1, g, 1, "👍", false);
    assert_eq!(s.error_code(on_deleted), ErrorCode::Conflict);
    assert_eq!(s.reaction_events().len(), before);
}

// Blocks.

#[test]
fn a_blocked_direct_chat_takes_nothing_until_both_unblock() {
    let mut s = Sim::new();
    let d = s.create(
        ConversationKind::Direct,
        &[(1, Role::Member), (2, Role::Member)],
    );
    s.send(1, d, "a", true);
    // User 2 blocked user 1 before the chat was loaded again.
    s.put(Ks::Blocks, &keys::pair(2, 1), Vec::new());
    s.restart();
    let refused = s.send(1, d, "b", true);
    assert_eq!(s.error_code(refused), ErrorCode::Blocked);
    let back = s.send(2, d, "c", true);
    assert_eq!(s.error_code(back), ErrorCode::Blocked, "either way");
    let typing = s.request(1, d, OwnerOp::Typing(true));
    assert!(!s.answered(typing));
    assert!(s.pushes.iter().all(|p| !p.ephemeral), "typing dropped");
    // User 1 blocks too; user 2 lifting theirs is not enough.
    let by_1 = s.request(1, d, OwnerOp::SetBlocked(true));
    assert!(matches!(s.answer(by_1), Body::Done(_)));
    let lifted = s.request(2, d, OwnerOp::SetBlocked(false));
    assert!(matches!(s.answer(lifted), Body::Done(_)));
    let still = s.send(2, d, "d", true);
    assert_eq!(s.error_code(still), ErrorCode::Blocked);
    let lifted = s.request(1, d, OwnerOp::SetBlocked(false));
    assert!(matches!(s.answer(lifted), Body::Done(_)));
    let sent = s.send(2, d, "e", true);
    assert_eq!(s.ack(sent).seq, 2);
    // Not for groups.
    let g = s.group();
    let in_group = s.request(1, g, OwnerOp::SetBlocked(true));
    assert_eq!(s.error_code(in_group), ErrorCode::InvalidArgument);
}

// Bans.

#[test]
fn a_banned_member_is_removed_and_kept_out_until_unbanned() {
    let mut s = Sim::new();
    let g = s.group();
    // A member bans nobody; an admin does not ban the owner or, unless
    // owner, another admin; nobody bans themselves.
    let cases = [
        (s.request(3, g, OwnerOp::Ban(4)), ErrorCode::Forbidden),
        (s.request(2, g, OwnerOp::Ban(1)), ErrorCode::Forbidden),
        (s.request(9, g, OwnerOp::Ban(4)), ErrorCode::NotAMember),
        (s.request(2, g, OwnerOp::Ban(2)), ErrorCode::InvalidArgument),
    ];
    for (rid, code) in cases {
        assert_eq!(s.error_code(rid), code);
    }
    let banned = s.request(2, g, OwnerOp::Ban(4));
    let view = s.conversation(banned);
    assert_eq!(view.banned_ids, [4]);
    assert!(Sim::role_in(view, 4).is_none(), "removed");
    let events = s.system_events();
    let last = events.last().expect("a system message");
    assert_eq!(last.kind, pb::system_event::Kind::MemberBanned as i32);
    assert_eq!((last.actor_id, last.user_ids.as_slice()), (2, &[4][..]));
    // Banned twice is one ban; a non-member may be banned ahead.
    let again = s.request(1, g, OwnerOp::Ban(4));
    assert_eq!(s.conversation(again).banned_ids, [4]);
    let ahead = s.request(1, g, OwnerOp::Ban(7));
    assert_eq!(s.conversation(ahead).banned_ids, [4, 7]);
    assert_eq!(s.system_events().len(), 1);
    // Kept out: not added back, also after a restart.
    s.restart();
    let add = s.request(1, g, OwnerOp::AddMembers(vec![5, 4]));
    assert_eq!(s.error_code(add), ErrorCode::Banned);
    assert!(s.member(g, 5).is_none(), "nothing changed");
    // Lifting a ban lets the user back.
    let lifted = s.request(2, g, OwnerOp::Unban(4));
    assert_eq!(s.conversation(lifted).banned_ids, [7]);
    let add = s.request(1, g, OwnerOp::AddMembers(vec![4]));
    assert!(matches!(s.answer(add), Body::Conversation(_)));

    // A channel's subscriber is removed without a system message and
    // cannot subscribe again.
    let ch = s.create(ConversationKind::Channel, &[(1, Role::Owner)]);
    let sub = s.request(5, ch, OwnerOp::SubscribeChannel);
    assert!(matches!(s.answer(sub), Body::Done(_)));
    let before = s.system_events().len();
    let ban = s.request(1, ch, OwnerOp::Ban(5));
    assert_eq!(s.conversation(ban).banned_ids, [5]);
    assert!(s.member(ch, 5).is_none());
    assert_eq!(s.system_events().len(), before);
    let back = s.request(5, ch, OwnerOp::SubscribeChannel);
    assert_eq!(s.error_code(back), ErrorCode::Banned);
}

// Mentions and notification levels.

#[test]
fn mentions_name_members_and_levels_are_kept_with_the_member() {
    let mut s = Sim::new();
    let g = s.group();
    let send = |ids: Vec<u64>, everyone: bool, cmid: &str| {
        OwnerOp::Send(pb::SendMessage {
            conversation_id: g,
            client_msg_id: cmid.into(),
            text: "hi".into(),
            mention_ids: ids,
            mention_everyone: everyone,
            first_attempt: true,
            ..Default::default()
        })
    };
    let outsider = s.request(1, g, send(vec![9], false, "a"));
    assert_eq!(s.error_code(outsider), ErrorCode::InvalidArgument);
    let many = s.request(1, g, send(vec![2; MENTIONS_MAX + 1], false, "b"));
    assert_eq!(s.error_code(many), ErrorCode::InvalidArgument);
    let ok = s.request(1, g, send(vec![3, 1, 3], true, "c"));
    assert_eq!(s.ack(ok).seq, 1, "refusals took no seq");
    let stored = s.stored_message(g, 1).expect("stored");
    assert_eq!(stored.mention_ids, [3], "each once, not the sender");
    assert!(stored.mention_everyone);
    assert!(s.get(Ks::Mentions, &keys::mention(3, g, 1)).is_some());
    assert!(s.get(Ks::Mentions, &keys::mention(0, g, 1)).is_some());
    let d = s.create(
        ConversationKind::Direct,
        &[(1, Role::Member), (2, Role::Member)],
    );
    let everyone_in_direct = s.request(1, d, send(vec![], true, "d"));
    assert_eq!(s.error_code(everyone_in_direct), ErrorCode::InvalidArgument);

    // A deleted message's mentions go with it.
    let deleted = s.delete(1, g, 1, s.stored_message(g, 1));
    assert!(matches!(s.answer(deleted), Body::Done(_)));
    assert!(s.get(Ks::Mentions, &keys::mention(3, g, 1)).is_none());
    assert!(s.get(Ks::Mentions, &keys::mention(0, g, 1)).is_none());

    let muted = s.request(
        3,
        g,
        OwnerOp::SetNotify(pb::NotificationLevel::Muted as i32, 77),
    );
    assert!(matches!(s.answer(muted), Body::Done(_)));
    let bad = s.request(
        3,
        g,
        OwnerOp::SetNotify(pb::NotificationLevel::All as i32, 77),
    );
    assert_eq!(s.error_code(bad), ErrorCode::InvalidArgument);
    s.restart();
    let m = s.member(g, 3).expect("member");
    assert_eq!(
        (m.notification_level, m.muted_until_ms),
        (pb::NotificationLevel::Muted as i32, 77)
    );
    assert!(
        !m.notified(true, 76) && m.notified(false, 77),
        "muted until 77"
    );
}

//! The shard's side of push notifications: recipients go to the shards
//! that keep their presence, which hand those with no connected session to
//! the push thread ([`crate::push`]).

use std::sync::Arc;

use chat_protocol::UserId;

use super::Shard;
use crate::push::Notice;
use crate::shard_msg::ShardMsg;

impl Shard {
    /// Hands a message's recipients (but its sender) to the shards that
    /// keep their presence, which notify those with no connected session.
    pub async fn notify_offline(&self, users: &[u64], notice: Arc<Notice>) {
        let mut per_shard: Vec<Vec<u64>> = vec![Vec::new(); self.shared.place.nr_shards()];
        for &u in users {
            if u == notice.sender_id {
                continue;
            }
            if let Some(list) = per_shard.get_mut(self.shared.place.presence_of(UserId(u))) {
                list.push(u);
            }
        }
        for (dst, users) in per_shard.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            if dst == self.id {
                self.offer_push(&users, &notice);
            } else {
                let notice = notice.clone();
                let msg = ShardMsg::PushCheck { users, notice };
                self.shared.mesh.send(self.id, dst, msg).await;
            }
        }
    }

    /// Queues notifications for those of `users` (kept by this shard) who
    /// have no connected session.
    pub fn offer_push(&self, users: &[u64], notice: &Arc<Notice>) {
        let presence = self.presence.borrow();
        for &u in users {
            if !presence.connected(u) {
                self.shared.push.offer(u, notice);
            }
        }
    }
}

//! Carrying out the region machine's effects, in one place.
//!
//! Every replica applies every entry, and each entry's effects reach the
//! node in two ways: the command's own outcome, in the lane that proposed
//! it, and the stream of applied entries, on every node. An effect says
//! which of the two acts on it ([`regions::Effect::before_reply`], in the
//! manner of etcd-raft's `Ready`: what must be durable or done before a
//! message goes out is done first):
//!
//! | effect | when | by whom | what |
//! |---|---|---|---|
//! | `PersistDiskLog` | before the reply | the proposing node | wait until the version is durable on the device |
//! | `KickKernel` | after apply | the node named | suspend and resume its mirrors (the transport's kick) |
//! | `WakeRecovery` | after apply | the node named | make its idle kernel ask for resync work |
//! | `LeaseRenewed` | after apply | every node | the lease table notes the renewal |
//!
//! [`Effects::carry_out`] is the one `match` over them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use regions::{Effect, NodeId};
use replication::{LeaderLink, Replica};
use wire::{Errno, Uuid};

use crate::live::Renewals;
use crate::metrics::{LogLabel, Metrics};
use crate::transport::Transport;

/// A kick (`true`) or a wake (`false`) of this node's kernel, through the
/// host's transport.
type PromptFn =
    Arc<dyn Fn(Uuid, bool) -> futures_util::future::BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// The effects of one node.
pub struct Effects<L: LeaderLink> {
    me: NodeId,
    replica: Arc<Replica<L>>,
    metrics: Arc<Metrics>,
    /// Kicks (`true`) and wakes (`false`) of this node's kernel.
    prompt: PromptFn,
    /// The leader's lease table of the running liveness task.
    renewals: Mutex<Option<Renewals>>,
    /// Logs with a wake under way (a restart replays many).
    waking: Arc<Mutex<HashSet<Uuid>>>,
    /// Kicks switched off (`DMLOGD_SIM_BREAK=no-kick`, simulation only).
    no_kick: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<L: LeaderLink> Effects<L> {
    /// The effects of `replica`'s node, prompting its kernel through
    /// `transport`.
    pub fn new<T: Transport>(replica: Arc<Replica<L>>, transport: Arc<T>, metrics: Arc<Metrics>) -> Arc<Effects<L>> {
        let prompt: PromptFn = Arc::new(move |uuid, kick| {
            let t = transport.clone();
            Box::pin(async move { if kick { t.kick(&uuid).await } else { t.wake(&uuid).await } })
        });
        Arc::new(Effects {
            me: replica.id,
            replica,
            metrics,
            prompt,
            renewals: Mutex::new(None),
            waking: Arc::default(),
            no_kick: crate::breaks::off("no-kick"),
        })
    }

    /// The liveness task now running takes the renewals.
    pub fn set_renewals(&self, r: Renewals) {
        *lock(&self.renewals) = Some(r);
    }

    /// The effects of this node's own command on log `uuid` that must be
    /// done before its answer; `Err` is the errno the kernel gets instead.
    pub async fn before_reply(&self, uuid: &Uuid, effects: &[Effect]) -> Result<(), Errno> {
        for e in effects.iter().filter(|e| e.before_reply()) {
            if let Effect::PersistDiskLog { uuid: u, .. } = e
                && u != uuid
            {
                // Another log's device (an eviction's); its writer handles it.
                continue;
            }
            self.carry_out(e).await?;
        }
        Ok(())
    }

    /// The effects of an applied entry that are done after apply.
    pub async fn after_apply(&self, effects: &[Effect]) {
        for e in effects.iter().filter(|e| !e.before_reply()) {
            let _ = self.carry_out(e).await;
        }
    }

    /// Carries out one effect.
    async fn carry_out(&self, e: &Effect) -> Result<(), Errno> {
        match e {
            Effect::PersistDiskLog { uuid, version } => {
                crate::disk_log::wait_durable(&self.replica, uuid, *version).await.map_err(|why| {
                    tracing::error!(%uuid, %why, "the log device did not take the flush");
                    Errno::EIO
                })
            }
            Effect::LeaseRenewed { node } => {
                if let Some(r) = lock(&self.renewals).as_ref() {
                    r.renewed(*node);
                }
                Ok(())
            }
            Effect::KickKernel { node, uuid } if *node == self.me && !self.no_kick => {
                // A restarted daemon applies old entries again: only the
                // kick the log still waits for is done.
                let current = self.replica.state.read(|m| m.log(uuid).and_then(|l| l.kicking()) == Some(self.me));
                if !current {
                    tracing::debug!(%uuid, "skipped a kick the log no longer waits for");
                    return Ok(());
                }
                let (prompt, metrics, uuid) = (self.prompt.clone(), self.metrics.clone(), uuid.clone());
                tokio::spawn(async move {
                    let label = LogLabel { uuid: uuid.to_string() };
                    match prompt(uuid.clone(), true).await {
                        Ok(what) => {
                            metrics.kicks.get_or_create(&label).inc();
                            tracing::warn!(%uuid, "kicked the kernel to resync regions an eviction put out of sync: {what}");
                        }
                        Err(e) => {
                            metrics.kick_failures.get_or_create(&label).inc();
                            tracing::error!(%uuid, error = %e, "could not kick the kernel; suspend and resume the mirror by hand so it resyncs");
                        }
                    }
                });
                Ok(())
            }
            Effect::WakeRecovery { node, uuid } if *node == self.me => {
                if !lock(&self.waking).insert(uuid.clone()) {
                    return Ok(());
                }
                let (prompt, metrics, waking, uuid) =
                    (self.prompt.clone(), self.metrics.clone(), self.waking.clone(), uuid.clone());
                tokio::spawn(async move {
                    let label = LogLabel { uuid: uuid.to_string() };
                    metrics.wakes.get_or_create(&label).inc();
                    match prompt(uuid.clone(), false).await {
                        Ok(what) => tracing::info!(%uuid, "woke the kernel to resync: {what}"),
                        Err(e) => {
                            metrics.wake_failures.get_or_create(&label).inc();
                            tracing::warn!(%uuid, error = %e, "could not wake the kernel to resync");
                        }
                    }
                    lock(&waking).remove(&uuid);
                });
                Ok(())
            }
            Effect::KickKernel { .. } | Effect::WakeRecovery { .. } => Ok(()),
        }
    }
}

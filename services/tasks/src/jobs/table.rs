//! The jobs this node submitted: each one's latest snapshot (a `watch` channel that its
//! driving task updates and followers read), its owner and its cancel token; bounded, the
//! oldest ended jobs forgotten first.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard},
};

use p2pos_proto::jobs::v1::{Job, State};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Jobs that have not ended, in all and per app (the admin counts as one app).
pub(crate) const MAX_ACTIVE: usize = 4096;
pub(crate) const MAX_ACTIVE_PER_APP: usize = 1024;
/// Ended jobs kept for `Get` and `List`.
pub(crate) const MAX_ENDED: usize = 1024;
/// Bytes of the specs of jobs not ended (their modules, inputs and files), per app and in all.
pub(crate) const MAX_ACTIVE_BYTES_PER_APP: usize = 1 << 30;
pub(crate) const MAX_ACTIVE_BYTES: usize = 4 << 30;
/// Bytes of ended jobs' results kept, in all: past it, the oldest results are dropped (the
/// jobs stay, with their state and message).
pub(crate) const MAX_RESULT_BYTES: usize = 512 << 20;

/// Whether a job in `state` has ended.
pub(crate) fn ended(state: i32) -> bool {
    matches!(
        State::try_from(state),
        Ok(State::Done | State::Failed | State::Cancelled)
    )
}

/// One submitted job.
#[derive(Clone)]
pub(crate) struct Entry {
    /// The app that submitted it; `None`: the admin.
    pub(crate) owner: Option<String>,
    /// Its snapshot.
    pub(crate) job: Arc<watch::Sender<Job>>,
    /// Cancels its runs.
    pub(crate) cancel: CancellationToken,
    /// The size of its spec.
    pub(crate) bytes: usize,
}

impl Entry {
    /// Whether `caller` (`None`: the admin) may see it.
    pub(crate) fn visible_to(&self, caller: Option<&str>) -> bool {
        caller.is_none() || self.owner.as_deref() == caller
    }
}

#[derive(Default)]
struct Inner {
    jobs: BTreeMap<String, Entry>,
    /// Ids in submission order.
    order: VecDeque<String>,
}

/// The table: cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Table(Arc<Mutex<Inner>>);

impl Table {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a job of `owner` (its id in `job`, its spec `bytes` long), if the bounds allow;
    /// forgets the oldest ended jobs past [`MAX_ENDED`], and the oldest results past
    /// [`MAX_RESULT_BYTES`].
    pub(crate) fn insert(
        &self,
        owner: Option<String>,
        job: Job,
        bytes: usize,
    ) -> Result<Entry, Error> {
        let mut inner = self.lock();
        let active: Vec<&Entry> = inner
            .jobs
            .values()
            .filter(|e| !ended(e.job.borrow().state))
            .collect();
        if active.len() >= MAX_ACTIVE {
            return Err(Error::Limit {
                what: "jobs not ended on this node",
                limit: MAX_ACTIVE,
            });
        }
        if active.iter().filter(|e| e.owner == owner).count() >= MAX_ACTIVE_PER_APP {
            return Err(Error::Limit {
                what: "jobs not ended of one app",
                limit: MAX_ACTIVE_PER_APP,
            });
        }
        let in_all: usize = active.iter().map(|e| e.bytes).sum();
        let of_app: usize = active
            .iter()
            .filter(|e| e.owner == owner)
            .map(|e| e.bytes)
            .sum();
        if of_app + bytes > MAX_ACTIVE_BYTES_PER_APP {
            return Err(Error::Limit {
                what: "bytes of modules and inputs of one app's jobs not ended",
                limit: MAX_ACTIVE_BYTES_PER_APP,
            });
        }
        if in_all + bytes > MAX_ACTIVE_BYTES {
            return Err(Error::Limit {
                what: "bytes of modules and inputs of the jobs not ended on this node",
                limit: MAX_ACTIVE_BYTES,
            });
        }
        let id = job.job_id.clone();
        let entry = Entry {
            owner,
            job: Arc::new(watch::Sender::new(job)),
            cancel: CancellationToken::new(),
            bytes,
        };
        inner.jobs.insert(id.clone(), entry.clone());
        inner.order.push_back(id);
        let ended_count = inner
            .jobs
            .values()
            .filter(|e| ended(e.job.borrow().state))
            .count();
        let mut excess = ended_count.saturating_sub(MAX_ENDED);
        let Inner { jobs, order } = &mut *inner;
        order.retain(|id| {
            if excess > 0 && jobs.get(id).is_some_and(|e| ended(e.job.borrow().state)) {
                jobs.remove(id);
                excess -= 1;
                false
            } else {
                true
            }
        });
        drop(inner);
        self.trim_results();
        Ok(entry)
    }

    /// Drops the results of the oldest ended jobs past [`MAX_RESULT_BYTES`] in all (newest
    /// first: the results that fit stay).
    pub(crate) fn trim_results(&self) {
        let inner = self.lock();
        let mut kept = 0usize;
        for id in inner.order.iter().rev() {
            let Some(entry) = inner.jobs.get(id) else {
                continue;
            };
            let size = entry.job.borrow().result.as_ref().map_or(0, |r| {
                r.stdout.len()
                    + r.stderr.len()
                    + r.files.iter().map(|f| f.data.len()).sum::<usize>()
            });
            kept += size;
            if size > 0 && kept > MAX_RESULT_BYTES && ended(entry.job.borrow().state) {
                entry.job.send_modify(|j| {
                    j.result = None;
                    j.message
                        .push_str(" (its result was dropped: newer jobs' results fill the room)");
                });
            }
        }
    }

    /// The job `id`, if `caller` may see it.
    pub(crate) fn get(&self, caller: Option<&str>, id: &str) -> Result<Entry, Error> {
        self.lock()
            .jobs
            .get(id)
            .filter(|e| e.visible_to(caller))
            .cloned()
            .ok_or_else(|| Error::NoSuchJob(id.to_owned()))
    }

    /// The jobs `caller` may see, newest first.
    pub(crate) fn list(&self, caller: Option<&str>) -> Vec<Entry> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .rev()
            .filter_map(|id| inner.jobs.get(id))
            .filter(|e| e.visible_to(caller))
            .cloned()
            .collect()
    }

    /// Every job (to cancel them all when the service stops).
    pub(crate) fn all(&self) -> Vec<Entry> {
        self.lock().jobs.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> Job {
        Job {
            job_id: id.into(),
            state: State::Queued as i32,
            ..Job::default()
        }
    }

    #[test]
    fn apps_see_only_their_own_jobs() {
        let table = Table::default();
        table.insert(Some("chat".into()), job("a"), 0).unwrap();
        table.insert(Some("game".into()), job("b"), 0).unwrap();
        assert!(table.get(Some("chat"), "a").is_ok());
        assert!(matches!(
            table.get(Some("chat"), "b"),
            Err(Error::NoSuchJob(_))
        ));
        assert!(table.get(None, "b").is_ok());
        let ids: Vec<String> = table
            .list(None)
            .iter()
            .map(|e| e.job.borrow().job_id.clone())
            .collect();
        assert_eq!(ids, ["b", "a"]);
        assert_eq!(table.list(Some("game")).len(), 1);
    }

    #[test]
    fn ended_jobs_are_forgotten_oldest_first_and_active_ones_bounded() {
        let table = Table::default();
        for i in 0..MAX_ENDED + 3 {
            let e = table.insert(None, job(&i.to_string()), 0).unwrap();
            e.job.send_modify(|j| j.state = State::Done as i32);
        }
        table.insert(None, job("new"), 0).unwrap();
        assert!(table.get(None, "0").is_err(), "the oldest is forgotten");
        assert!(table.get(None, &(MAX_ENDED + 2).to_string()).is_ok());
        assert!(table.get(None, "new").is_ok());
        for i in 1..MAX_ACTIVE_PER_APP {
            table
                .insert(Some("x".into()), job(&format!("x{i}")), 0)
                .unwrap();
        }
        table.insert(Some("x".into()), job("x0"), 0).unwrap();
        let err = table
            .insert(Some("x".into()), job("one-more"), 0)
            .err()
            .unwrap();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
        // Another app is not held back by it.
        table.insert(Some("y".into()), job("y"), 0).unwrap();
        // Bytes are bounded per app too.
        let err = table
            .insert(Some("z".into()), job("huge"), MAX_ACTIVE_BYTES_PER_APP + 1)
            .err()
            .unwrap();
        assert!(matches!(err, Error::Limit { .. }), "{err}");
    }
}

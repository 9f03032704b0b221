//! The registry actor: the one owner of the object graph and of every object actor's address.
//!
//! Bookkeeping happens inside its message handlers, so each step is atomic. Kernel work never
//! runs here: creates run as separate tasks (see [`super::build`]) that call back with messages,
//! and releases run on one queue, in the order the graph gives, so that a user is always
//! released before what it uses.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::{join_all, BoxFuture, Shared};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::graph::{Graph, GraphError, ObjectKind, Removed, TxnId};
use super::record::{self, InitFacts, Record, View};
use crate::blocking::off_event_loop;
use crate::container::actor::{ChangeState, LeaveRunning, Retire, StateChanged};
use crate::container::timing::TARGET as TIMING;
use crate::error::Error;
use crate::events::{Change, Events, Subject};
use crate::metrics::Metrics;
use crate::model::wire::{ContainerState, Id};
use crate::object::{ObjectAddr, Surrender, Surrendered};
use crate::store::{self, Plan, Store, Ticket};

/// The release of one object, in flight: done once its resource is given back (or that failed).
type Releasing = Shared<BoxFuture<'static, ()>>;

/// A DELETE's answer, the object's last view: given once its objects are released and their
/// removal written, by the release walk's blocking thread when it wrote the removal (see
/// [`Handover`]), else by the engine.
#[derive(Clone)]
struct Answer(Arc<Mutex<Option<(View, DeleteAnswer)>>>);

impl Answer {
    fn new(view: View, answer: DeleteAnswer) -> Answer {
        Answer(Arc::new(Mutex::new(Some((view, answer)))))
    }

    /// Gives the answer unless it was given already.
    fn give(&self) {
        let answer = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some((view, answer)) = answer {
            let _ = answer.send(Ok(view));
        }
    }
}

/// A removal's journal line, parked in the store for the release walk's blocking thread to
/// write right after the releases, which then gives the DELETE's answer: neither the write nor
/// the answer takes a thread hop through the engine. Any write after it writes the line first
/// if it comes sooner.
#[derive(Clone)]
struct Handover {
    store: Arc<Store>,
    ticket: Ticket,
    answer: Answer,
    /// How long the walk's write took, once it has written.
    written: Arc<OnceLock<Duration>>,
}

impl Handover {
    /// Writes the line unless a later write already has, then answers. Blocking.
    fn write(&self) {
        let started = Instant::now();
        self.store.write_parked(self.ticket);
        let _ = self.written.set(started.elapsed());
        self.answer.give();
    }
}

/// Someone waiting for the graph as it was at their request (the number of the request, in
/// order) to be on disk.
type StoreWaiter = (u64, oneshot::Sender<Result<(), Error>>);

/// The state the registry starts from: empty, or reloaded from the store and checked against
/// the kernel (see [`crate::restore`]).
pub struct Initial {
    pub instance: String,
    pub graph: Graph<Record>,
    pub actors: HashMap<Id, ObjectAddr>,
}

pub struct Registry {
    graph: Graph<Record>,
    instance: String,
    actors: HashMap<Id, ObjectAddr>,
    /// The releases in flight of the users of each object: its own release waits for them, and
    /// for nothing else, so a release that hangs holds up only what it depends on.
    users_releasing: HashMap<Id, Vec<Releasing>>,
    me: Option<Addr<Registry>>,
    store: Option<Arc<Store>>,
    writes: Option<mpsc::UnboundedSender<StoreWaiter>>,
    /// How many writes have been asked for: the number of the last [`StoreWaiter`].
    write_requests: u64,
    /// Commits being written on a thread of their own (see [`Commit`]).
    commits_writing: Arc<AtomicUsize>,
    shutting_down: bool,
    /// Where the object counts go at each [`Census`].
    metrics: Metrics,
    /// Where every change to an object is published, as it happens.
    events: Events,
}

/// A store write in flight: resolves once the change is on disk (at once without a store).
pub type Persisted = futures::future::BoxFuture<'static, Result<(), Error>>;

impl Registry {
    pub fn new(
        initial: Initial,
        store: Option<Arc<Store>>,
        metrics: Metrics,
        events: Events,
    ) -> Self {
        Registry {
            graph: initial.graph,
            instance: initial.instance,
            actors: initial.actors,
            users_releasing: HashMap::new(),
            me: None,
            store,
            writes: None,
            write_requests: 0,
            commits_writing: Arc::default(),
            shutting_down: false,
            metrics,
            events,
        }
    }

    /// Has the graph as it is now written to the store. The writer serializes the changes when
    /// it gets to the write, so changes that pile up meanwhile cost one write and one sync in
    /// all.
    fn persist(&mut self) -> Persisted {
        let Some(writes) = &self.writes else {
            // Without a store nobody asks for the changes: do not let them pile up.
            self.take_changed();
            return Box::pin(async { Ok(()) });
        };
        let (done, written) = oneshot::channel();
        self.write_requests += 1;
        let queued = writes
            .send((self.write_requests, done))
            .map_err(|_| Error::ShuttingDown);
        Box::pin(async move {
            queued?;
            written.await.unwrap_or(Err(Error::ShuttingDown))
        })
    }

    /// Queues a write of the graph as it is now without waiting for it: it is ordered with
    /// every other write, and a later awaited one covers it.
    fn persist_unawaited(&mut self) {
        let _queued = self.persist();
    }

    /// Why object `id` of a create in progress is no longer there.
    fn gone(&self, id: Id) -> Error {
        if self.shutting_down {
            Error::ShuttingDown
        } else {
            GraphError::DependencyGone(id).into()
        }
    }

    fn refuse_when_shutting_down(&self) -> Result<(), Error> {
        if self.shutting_down {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Serializes what the store must write for `plan`: the whole graph, or the nodes changed
    /// since the last write (with their facts) as one journal line; with its place in the
    /// store's order. When that fails, the changes taken are in no batch: the store's next
    /// write is a whole snapshot.
    fn changes(&mut self, store: &Store, plan: Plan) -> Result<(Ticket, Vec<u8>), String> {
        let changed = self.take_changed();
        match store::serialize(plan, &self.instance, &self.graph, &changed) {
            Ok(serialized) => Ok((store.ticket(), serialized)),
            Err(err) => {
                store.start_over();
                Err(err.to_string())
            }
        }
    }

    /// Takes the removal just made out of the graph as a journal line, parked in the store for
    /// the release walk's blocking thread to write right after the releases, and to give the
    /// DELETE's `answer` then (see [`Handover`]). None without a store, or when the next write
    /// must be a whole snapshot: the writer makes that one.
    fn hand_over_removal(&mut self, answer: &Answer) -> Option<Handover> {
        let store = self.store.clone()?;
        let plan = store.plan();
        if plan != Plan::Journal {
            return None;
        }
        match self.changes(&store, plan) {
            Ok((ticket, line)) => {
                store.park(ticket, plan, line);
                Some(Handover {
                    store,
                    ticket,
                    answer: answer.clone(),
                    written: Arc::default(),
                })
            }
            Err(err) => {
                // The changes taken are written by the next write, as a whole snapshot.
                warn!(error = %err, "state store write failed");
                None
            }
        }
    }

    fn take_changed(&mut self) -> BTreeSet<Id> {
        self.graph.take_changed()
    }

    /// Releases the removed objects (given users first), each once its users in flight are
    /// released, then records that; resolves when both are done, with the time the write took.
    /// `force`: a forced delete.
    ///
    /// The write follows the releases rather than running beside them: on a machine of few
    /// CPUs the two slow each other down by more than the write takes (the README's Benchmark
    /// section measures it), and a crash in between leaves the objects recorded, for the next
    /// start to adopt what was not released yet (an rbd mapping too, which carries no tag a
    /// sweep could find) and to drop what was. A write for another request in between records
    /// the removal earlier; what a crash then leaves unreleased goes to the sweeps of untracked
    /// loop devices, mountpoints and cgroups at the next start.
    ///
    /// With a `handover` the walk's blocking thread writes the removal right after the releases
    /// itself, without a thread hop of its own.
    fn release(
        &mut self,
        removed: Vec<Removed<Record>>,
        force: bool,
        handover: Option<Handover>,
    ) -> BoxFuture<'static, Duration> {
        let released = self.release_objects(removed, force, handover.clone());
        let me = self.me.clone();
        Box::pin(async move {
            released.await;
            if let Some(took) = handover
                .as_ref()
                .and_then(|handover| handover.written.get())
            {
                return *took;
            }
            // (A handover the walk did not write is written first by this write.)
            let started = Instant::now();
            if let Some(me) = me {
                // A failed write is logged by the writer; the objects are gone either way.
                let _ = me.send(Persist).await;
            }
            started.elapsed()
        })
    }

    /// Makes the release of each of `deps` wait for `releasing`, the release of a user of it.
    fn wait_for_release(&mut self, deps: impl IntoIterator<Item = Id>, releasing: &Releasing) {
        for dep in deps {
            let waiting = self.users_releasing.entry(dep).or_default();
            waiting.retain(|release| release.peek().is_none());
            waiting.push(releasing.clone());
        }
    }

    /// Releases the removed objects as [`Registry::release`] does, without the write (but for
    /// a `handover`'s, which the walk's thread writes).
    ///
    /// They go in one release walk: their actors give up their resources (a container's actor
    /// once its init is gone) and one blocking thread releases them all in the order given,
    /// users first, as a create makes them on one (each thread hop costs a wake-up of another
    /// CPU). The walk waits for any users still releasing from earlier removals.
    fn release_objects(
        &mut self,
        removed: Vec<Removed<Record>>,
        force: bool,
        handover: Option<Handover>,
    ) -> BoxFuture<'static, ()> {
        let in_removal: BTreeSet<Id> = removed.iter().map(|object| object.id).collect();
        let mut walk = Vec::new();
        let mut waits_for = Vec::new();
        let mut deps = BTreeSet::new();
        for object in removed {
            // Its users still releasing hold up the walk, and so what it uses.
            waits_for.extend(self.users_releasing.remove(&object.id).unwrap_or_default());
            deps.extend(object.deps);
            // Without an actor, the kernel step never succeeded: nothing was told made.
            let Some(addr) = self.actors.remove(&object.id) else {
                continue;
            };
            let released = Released {
                id: object.id,
                kind: object.kind,
                subject: subject(object.id, object.name, &object.record),
                events: self.events.clone(),
            };
            walk.push((released, addr.surrender()));
        }
        let objects = in_removal.len();
        if walk.is_empty() && waits_for.is_empty() {
            return Box::pin(async {});
        }
        let releasing: Releasing = release_walk(walk, waits_for, force, handover).shared();
        let outside = deps.into_iter().filter(|dep| !in_removal.contains(dep));
        self.wait_for_release(outside, &releasing);
        actix_rt::spawn(releasing.clone());
        Box::pin(async move {
            let started = Instant::now();
            releasing.await;
            let release_us = started.elapsed().as_micros() as u64;
            debug!(target: TIMING, objects, release_us, "objects released");
        })
    }
}

/// An object of a removal, to be told released.
struct Released {
    id: Id,
    kind: ObjectKind,
    subject: Subject,
    events: Events,
}

impl Released {
    /// Records how the release went and tells it (once the resource is given back, or that
    /// failed: the object is gone from the graph either way). Its actor's release logged it.
    fn told(self, result: Result<(), Error>, took: Duration) {
        let (id, kind) = (self.id, self.kind.as_str());
        let release_us = took.as_micros() as u64;
        debug!(target: TIMING, id, kind, release_us, "object released");
        if let Err(err) = result {
            warn!(id, kind, error = %err, "release failed");
        }
        self.events
            .publish(Change::Deleted, self.subject, (None, None), None);
    }
}

/// The release walk of a removal's objects (given users first), once what it `waits_for` is
/// released. With nothing to wait for, it starts at the call (see [`start_walk`]).
fn release_walk(
    walk: Vec<(Released, Recipient<Surrender>)>,
    waits_for: Vec<Releasing>,
    force: bool,
    handover: Option<Handover>,
) -> BoxFuture<'static, ()> {
    if walk.is_empty() {
        return join_all(waits_for).map(drop).boxed();
    }
    if waits_for.is_empty() {
        return start_walk(walk, force, handover).boxed();
    }
    async move {
        join_all(waits_for).await;
        start_walk(walk, force, handover).await;
    }
    .boxed()
}

/// Hands the walk to a blocking thread at once and tells the actors to surrender: the thread
/// wakes while they give up their resources (they live on this arbiter, which runs them once
/// the caller returns; a container's once its init is gone), and gets them all in one go. It
/// releases them in the order given, writes a handover's removal and answers, and only then
/// writes the releases' log lines.
fn start_walk(
    walk: Vec<(Released, Recipient<Surrender>)>,
    force: bool,
    handover: Option<Handover>,
) -> impl Future<Output = ()> {
    let (hand, handed) = oneshot::channel::<Vec<Option<Surrendered>>>();
    let results = off_event_loop(move || {
        // A walk the engine dropped (a shutdown) hands nothing: nothing to release here.
        let surrendered = handed.blocking_recv().unwrap_or_default();
        let outcomes = surrendered
            .into_iter()
            .map(|surrendered| {
                let started = Instant::now();
                let outcome = surrendered.map(Surrendered::release);
                (outcome, started.elapsed())
            })
            .collect::<Vec<_>>();
        if let Some(handover) = handover {
            handover.write();
        }
        outcomes
            .into_iter()
            .map(|(outcome, took)| match outcome {
                Some(outcome) => {
                    outcome.log();
                    (outcome.result, took)
                }
                None => (Ok(()), took),
            })
            .collect::<Vec<_>>()
    });
    async move {
        let surrendered =
            join_all(walk.iter().map(|(_, addr)| addr.send(Surrender { force }))).await;
        // A closed mailbox: the actor is gone, and its resource with it.
        let _ = hand.send(surrendered.into_iter().map(|s| s.ok().flatten()).collect());
        let results = results.await.unwrap_or_default();
        let results = results.into_iter().chain(std::iter::repeat_with(|| {
            (Err(Error::ShuttingDown), Duration::ZERO)
        }));
        for ((released, _), (result, took)) in walk.into_iter().zip(results) {
            released.told(result, took);
        }
    }
}

/// Who an event is about: object `id`, called `name`, recorded as `record`.
fn subject(id: Id, name: Option<String>, record: &Record) -> Subject {
    Subject {
        object: record.kind(),
        id,
        kind: record.object().map(|object| object.kind.name()),
        name,
    }
}

/// What the store must write now, serialized for the store's plan, and the number of the last
/// write asked for until now, whose changes it holds.
#[derive(Message)]
#[rtype(result = "(Result<(Ticket, Vec<u8>), String>, u64)")]
struct TakeChanges(Plan);

impl Handler<TakeChanges> for Registry {
    type Result = MessageResult<TakeChanges>;
    fn handle(&mut self, msg: TakeChanges, _: &mut Self::Context) -> Self::Result {
        let taken = match self.store.clone() {
            Some(store) => self.changes(&store, msg.0),
            None => Err("no state store".to_string()),
        };
        MessageResult((taken, self.write_requests))
    }
}

/// Writes the current graph to the store.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
struct Persist;

impl Handler<Persist> for Registry {
    type Result = ResponseFuture<Result<(), Error>>;
    fn handle(&mut self, _: Persist, _: &mut Self::Context) -> Self::Result {
        self.persist()
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(1024);
        self.me = Some(ctx.address());
        if let Some(store) = self.store.clone() {
            let (writes, mut queue) = mpsc::unbounded_channel::<StoreWaiter>();
            self.writes = Some(writes);
            let registry = ctx.address();
            actix_rt::spawn(async move {
                // A request taken from the queue that the last write did not cover.
                let mut next = None;
                loop {
                    let first = match next.take() {
                        Some(first) => first,
                        None => match queue.recv().await {
                            Some(first) => first,
                            None => break,
                        },
                    };
                    let mut waiting = vec![first.1];
                    // Taken after every waiter's change: one write makes them all durable,
                    // those asked for while the changes were being taken too (their changes
                    // came before), so that a commit right behind a write does not need one
                    // more sync of nothing.
                    let plan = store.plan();
                    let taken = registry.send(TakeChanges(plan)).await;
                    let covered = taken.as_ref().map_or(first.0, |(_, covered)| *covered);
                    while let Ok(request) = queue.try_recv() {
                        if request.0 <= covered {
                            waiting.push(request.1);
                        } else {
                            next = Some(request);
                            break;
                        }
                    }
                    let saved = match taken.map(|(serialized, _)| serialized) {
                        Ok(Ok((ticket, serialized))) => {
                            let writer = store.clone();
                            let (bytes, waiters) = (serialized.len(), waiting.len());
                            let write = move || {
                                let started = Instant::now();
                                let written = writer.write(ticket, plan, &serialized);
                                (written, started.elapsed())
                            };
                            match off_event_loop(write).await {
                                Some((written, took)) => {
                                    debug!(
                                        target: TIMING,
                                        bytes,
                                        waiters,
                                        snapshot = matches!(plan, Plan::Snapshot { .. }),
                                        write_us = took.as_micros() as u64,
                                        "store write"
                                    );
                                    written.map_err(|err| err.to_string())
                                }
                                None => {
                                    // It did not run: the writes after it go on, and the next
                                    // one stores the whole graph.
                                    store.abandon(ticket);
                                    Err("the write was cancelled".to_string())
                                }
                            }
                        }
                        // (The next write stores the whole graph: see `changes`.)
                        Ok(Err(err)) => Err(err),
                        Err(_) => Err("the registry is gone".to_string()),
                    };
                    if let Err(err) = &saved {
                        warn!(error = %err, "state store write failed");
                    }
                    for done in waiting {
                        let _ = done.send(saved.clone().map_err(Error::Store));
                    }
                }
            });
            // The graph checked at start may differ from the stored one: store it first.
            self.persist_unawaited();
        }
    }
}

/// Starts a create transaction.
#[derive(Message)]
#[rtype(result = "Result<TxnId, Error>")]
pub struct Begin;

impl Handler<Begin> for Registry {
    type Result = Result<TxnId, Error>;
    fn handle(&mut self, _: Begin, _: &mut Self::Context) -> Self::Result {
        if self.shutting_down {
            return Err(Error::ShuttingDown);
        }
        Ok(self.graph.begin())
    }
}

/// A reference by id inside a create: holds the object for the transaction.
#[derive(Message)]
#[rtype(result = "Result<(Record, ObjectAddr), Error>")]
pub struct Hold {
    pub txn: TxnId,
    pub id: Id,
    pub kind: ObjectKind,
}

impl Handler<Hold> for Registry {
    type Result = Result<(Record, ObjectAddr), Error>;
    fn handle(&mut self, msg: Hold, _: &mut Self::Context) -> Self::Result {
        self.refuse_when_shutting_down()?;
        let addr = self
            .actors
            .get(&msg.id)
            .cloned()
            .ok_or(GraphError::NotFound(msg.id))?;
        self.graph.hold(msg.txn, msg.id, msg.kind)?;
        let record = self
            .graph
            .get_any(msg.id)
            .map(|node| node.record.clone())
            .ok_or(GraphError::NotFound(msg.id))?;
        Ok((record, addr))
    }
}

/// Registers an object of a transaction right before its kernel step: gives it its id.
#[derive(Message)]
#[rtype(result = "Result<Id, Error>")]
pub struct Reserve {
    pub txn: TxnId,
    pub name: Option<String>,
    pub record: Record,
    pub deps: Vec<Id>,
}

impl Handler<Reserve> for Registry {
    type Result = Result<Id, Error>;
    fn handle(&mut self, msg: Reserve, _: &mut Self::Context) -> Self::Result {
        // Nothing new after a shutdown began: a releasing shutdown would not wait for it.
        self.refuse_when_shutting_down()?;
        let kind = msg.record.kind();
        let written = msg.record.written_at_each_step();
        let id = self
            .graph
            .reserve(msg.txn, kind, msg.name, msg.record, &msg.deps)?;
        // The intent goes to the store ahead of the kernel step of a kind a restart could not
        // find without it, in order, without waiting: the create's commit waits. What the other
        // kinds leave after a crash is recognised by its tag, cgroup or mountpoint at the next
        // start (see crate::restore); writing them at each step would only hold up the create.
        if written {
            self.persist_unawaited();
        }
        Ok(id)
    }
}

/// The kernel step of a reserved object succeeded: its record with the kernel facts, and its actor.
/// Refused when the object was removed meanwhile (forced delete of a dependency, shutdown): the
/// caller then releases the actor itself.
#[derive(Message)]
#[rtype(result = "Result<(), Error>")]
pub struct Ready {
    pub id: Id,
    pub record: Record,
    pub addr: ObjectAddr,
}

impl Handler<Ready> for Registry {
    type Result = Result<(), Error>;
    fn handle(&mut self, msg: Ready, _: &mut Self::Context) -> Self::Result {
        let written = msg.record.written_at_each_step();
        let Some(record) = self.graph.record_mut(msg.id) else {
            return Err(self.gone(msg.id));
        };
        *record = msg.record;
        let state = match record {
            Record::Container(container) => Some(container.state),
            _ => None,
        };
        self.actors.insert(msg.id, msg.addr);
        // Told when the kernel resource exists, before the whole create commits: a container
        // started by its create reports running after this, and an object of a create that
        // fails later is told deleted once released.
        if let Some(node) = self.graph.get_any(msg.id) {
            let about = subject(msg.id, node.name.clone(), &node.record);
            self.events
                .publish(Change::Created, about, (state, None), None);
        }
        // As the intent: written in order with the rest, for the kinds that need it; the
        // create's commit waits for it, so nobody needs to wait here.
        if written {
            self.persist_unawaited();
        }
        Ok(())
    }
}

/// Where a create's answer goes: the top object's view, or why it was not made.
pub type CreateAnswer = oneshot::Sender<Result<View, Error>>;

/// Makes a transaction's objects visible and answers the top object's view on `answer` once
/// they are in the store; should the write fail, the create is undone (see [`UndoCommit`]).
///
/// When no other commit is being written, the write runs on a blocking thread of its own, which
/// answers directly (no hop back through the registry: the answer's latency). Otherwise the
/// commit joins the store's batched writes: under load one write then covers many commits, and
/// commits do not each hold a thread waiting for their turn (the load run's throughput and
/// memory).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Commit {
    pub txn: TxnId,
    pub top: Id,
    pub answer: CreateAnswer,
}

impl Handler<Commit> for Registry {
    type Result = ();
    fn handle(&mut self, msg: Commit, ctx: &mut Self::Context) -> Self::Result {
        let Commit { txn, top, answer } = msg;
        let started = Instant::now();
        self.graph.commit(txn);
        let view = match record::view(&self.graph, top) {
            Some(view) => view,
            None => {
                let _ = answer.send(Err(self.gone(top)));
                return;
            }
        };
        let registry = ctx.address();
        let store = match self.store.clone() {
            Some(store) if self.commits_writing.load(Ordering::SeqCst) == 0 => store,
            // Another commit being written, or no store at all (answered at once).
            _ => {
                let persisted = self.persist();
                actix_rt::spawn(async move {
                    match persisted.await {
                        Ok(()) => {
                            let _ = answer.send(Ok(view));
                            let persist_us = started.elapsed().as_micros() as u64;
                            debug!(target: TIMING, id = top, persist_us, "create committed");
                        }
                        Err(error) => registry.do_send(UndoCommit { top, error, answer }),
                    }
                });
                return;
            }
        };
        let plan = store.plan();
        let (ticket, serialized) = match self.changes(&store, plan) {
            Ok(taken) => taken,
            Err(err) => {
                // The next write stores the changes taken: see `changes`.
                warn!(error = %err, "state store write failed");
                ctx.notify(UndoCommit {
                    top,
                    error: Error::Store(err),
                    answer,
                });
                return;
            }
        };
        self.commits_writing.fetch_add(1, Ordering::SeqCst);
        let mut turn = TicketTurn {
            store,
            ticket,
            taken: false,
            writing: self.commits_writing.clone(),
        };
        // Dropped unrun (a shutdown), the closure gives up its turn: see [`TicketTurn`].
        actix_rt::task::spawn_blocking(move || {
            turn.taken = true;
            let written = turn.store.write(turn.ticket, plan, &serialized);
            let persist_us = started.elapsed().as_micros() as u64;
            match written {
                Ok(()) => {
                    let _ = answer.send(Ok(view));
                    debug!(target: TIMING, id = top, persist_us, "create committed");
                }
                Err(err) => {
                    warn!(error = %err, "state store write failed");
                    registry.do_send(UndoCommit {
                        top,
                        error: Error::Store(err.to_string()),
                        answer,
                    });
                }
            }
        });
    }
}

/// A commit's store write on a thread of its own: counted in `writing` until it is done, and its
/// turn given up (abandoned, so that the writes after it go on and the next one stores the
/// whole graph) unless the write was begun.
struct TicketTurn {
    store: Arc<Store>,
    ticket: Ticket,
    taken: bool,
    writing: Arc<AtomicUsize>,
}

impl Drop for TicketTurn {
    fn drop(&mut self) {
        if !self.taken {
            self.store.abandon(self.ticket);
        }
        self.writing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A create whose commit could not be written: not on disk, so not made. Undone as a failed
/// create is, and answered with the error once what it made is released.
#[derive(Message)]
#[rtype(result = "()")]
struct UndoCommit {
    top: Id,
    error: Error,
    answer: CreateAnswer,
}

impl Handler<UndoCommit> for Registry {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: UndoCommit, _: &mut Self::Context) -> Self::Result {
        let released = self
            .graph
            .delete(msg.top, true)
            .map(|removed| self.release(removed, true, None));
        Box::pin(async move {
            if let Ok(released) = released {
                released.await;
            }
            let _ = msg.answer.send(Err(msg.error));
        })
    }
}

/// Undoes a failed create: releases everything it made, deepest last.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abort(pub TxnId);

impl Handler<Abort> for Registry {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Abort, _: &mut Self::Context) -> Self::Result {
        let removed = self.graph.abort(msg.0);
        Box::pin(self.release(removed, true, None).map(drop))
    }
}

/// Which object a request names.
#[derive(Debug, Clone)]
pub enum Selector {
    Id(Id),
    Name(String),
}

/// Lists the visible objects of one kind, or the one a selector names.
#[derive(Message)]
#[rtype(result = "Result<Vec<View>, Error>")]
pub struct List {
    pub kind: ObjectKind,
    pub selector: Option<Selector>,
}

impl Registry {
    fn select(&self, kind: ObjectKind, selector: &Selector) -> Result<Id, Error> {
        let node = match selector {
            Selector::Id(id) => self.graph.get(*id).ok_or(GraphError::NotFound(*id))?,
            Selector::Name(name) => self
                .graph
                .by_name(name)
                .ok_or_else(|| Error::NameNotFound(name.clone()))?,
        };
        if node.kind != kind {
            return Err(GraphError::WrongKind {
                id: node.id,
                expected: kind,
                found: node.kind,
            }
            .into());
        }
        Ok(node.id)
    }
}

impl Handler<List> for Registry {
    type Result = Result<Vec<View>, Error>;
    fn handle(&mut self, msg: List, _: &mut Self::Context) -> Self::Result {
        match &msg.selector {
            Some(selector) => {
                let id = self.select(msg.kind, selector)?;
                Ok(record::view(&self.graph, id).into_iter().collect())
            }
            None => {
                let shared = record::Shared::default();
                Ok(self
                    .graph
                    .iter()
                    .filter(|node| node.kind == msg.kind)
                    .filter_map(|node| record::view_sharing(&self.graph, node.id, &shared))
                    .collect())
            }
        }
    }
}

/// Counts the visible objects into the metrics' gauges (counted when asked rather than kept
/// up to date at every change, so the gauges cannot drift from the graph).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Census;

impl Handler<Census> for Registry {
    type Result = ();
    fn handle(&mut self, _: Census, _: &mut Self::Context) {
        let objects = self.graph.iter().filter_map(|node| {
            let object = node.record.object()?;
            Some((node.kind, object.kind.name()))
        });
        let containers = self.graph.iter().filter_map(|node| match &node.record {
            Record::Container(container) => Some(container.state),
            _ => None,
        });
        self.metrics.set_census(objects, containers);
    }
}

/// Where a DELETE's answer goes: the object's last view, or why it was not deleted.
pub type DeleteAnswer = oneshot::Sender<Result<View, Error>>;

/// Deletes an object (and, when forced, its users) and answers its last view on `answer` once
/// everything is released and the removal written; a refusal at once. (The message itself has
/// no reply: the one waiting is woken once, by the answer.) A container decides itself whether
/// it may go (see [`Retire`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Delete {
    pub kind: ObjectKind,
    pub selector: Selector,
    pub force: bool,
    pub answer: DeleteAnswer,
}

impl Handler<Delete> for Registry {
    type Result = ResponseActFuture<Self, ()>;
    fn handle(&mut self, msg: Delete, _: &mut Self::Context) -> Self::Result {
        let Delete {
            kind,
            selector,
            force,
            answer,
        } = msg;
        let id = match self.select(kind, &selector) {
            Ok(id) => id,
            Err(err) => {
                let _ = answer.send(Err(err));
                return Box::pin(fut::ready(()));
            }
        };
        let container = match self.actors.get(&id) {
            Some(ObjectAddr::Container(addr)) => Some(addr.clone()),
            _ => None,
        };
        let agreed = async move {
            match container {
                Some(addr) => addr
                    .send(Retire { force })
                    .await
                    .map_err(|_| Error::ShuttingDown)?,
                None => Ok(()),
            }
        };
        Box::pin(agreed.into_actor(self).map(move |agreed, registry, _| {
            let deleted = agreed.and_then(|()| {
                let mut view = record::view(&registry.graph, id).ok_or(GraphError::NotFound(id))?;
                let removed = registry.graph.delete(id, force)?;
                view.set_refs(0);
                Ok((view, removed))
            });
            let (view, removed) = match deleted {
                Ok(deleted) => deleted,
                Err(err) => {
                    let _ = answer.send(Err(err));
                    return;
                }
            };
            let objects = removed.len();
            let kind = kind.as_str();
            // At debug level: a line costs the walk a `write` before it starts.
            debug!(id, kind, objects, force, "deleting");
            let answer = Answer::new(view, answer);
            let handover = registry.hand_over_removal(&answer);
            let released = registry.release(removed, force, handover);
            actix_rt::spawn(async move {
                let persist_us = released.await.as_micros() as u64;
                // (Given already when the walk wrote the removal.)
                answer.give();
                info!(id, kind, objects, force, "deleted");
                debug!(target: TIMING, id, persist_us, "delete written");
            });
        }))
    }
}

/// Refuses new creates, then either releases every object (users before what they use) or
/// leaves them all in place, containers running, for the next start to adopt.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub release: bool,
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseFuture<()>;
    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        if msg.release {
            let removed = self.graph.drain_all();
            info!(
                objects = removed.len(),
                "shutting down: releasing every object"
            );
            return Box::pin(self.release(removed, true, None).map(drop));
        }
        info!(
            objects = self.actors.len(),
            "shutting down: leaving every object in place"
        );
        for addr in self.actors.values() {
            if let ObjectAddr::Container(container) = addr {
                container.do_send(LeaveRunning);
            }
        }
        let persisted = self.persist();
        Box::pin(async move {
            let _ = persisted.await;
        })
    }
}

impl Handler<StateChanged> for Registry {
    type Result = ();
    fn handle(&mut self, msg: StateChanged, _: &mut Self::Context) {
        let name = self
            .graph
            .get_any(msg.id)
            .and_then(|node| node.name.clone());
        let Some(Record::Container(container)) = self.graph.record_mut(msg.id) else {
            return;
        };
        let old_state = std::mem::replace(&mut container.state, msg.state);
        if old_state != msg.state {
            let about = Subject {
                object: ObjectKind::Container,
                id: msg.id,
                kind: None,
                name,
            };
            let states = (Some(msg.state), Some(old_state));
            self.events
                .publish(Change::State, about, states, msg.exit_code);
        }
        if msg.exit_code.is_some() {
            container.exit_code = msg.exit_code;
        }
        match msg.init {
            Some((pid, start_time)) => container.init = Some(InitFacts { pid, start_time }),
            None if matches!(msg.state, ContainerState::Exited | ContainerState::Dead) => {
                container.init = None;
            }
            None => {}
        }
        // A container started by its own create is written by that create's commit, which
        // follows at once and is waited for: a write of its own would hold the commit up.
        let pending = self
            .graph
            .get_any(msg.id)
            .is_some_and(|node| node.is_pending());
        if !pending {
            // Nobody waits for this write; it is ordered with every other one.
            self.persist_unawaited();
        }
    }
}

/// Moves a container towards a state; answers its view afterwards.
#[derive(Message)]
#[rtype(result = "Result<View, Error>")]
pub struct SetState {
    pub selector: Selector,
    pub state: ContainerState,
}

impl Handler<SetState> for Registry {
    type Result = ResponseActFuture<Self, Result<View, Error>>;
    fn handle(&mut self, msg: SetState, _: &mut Self::Context) -> Self::Result {
        let target = self
            .select(ObjectKind::Container, &msg.selector)
            .and_then(|id| match self.actors.get(&id) {
                Some(ObjectAddr::Container(addr)) => Ok((id, addr.clone())),
                _ => Err(GraphError::NotFound(id).into()),
            });
        let (id, addr) = match target {
            Ok(target) => target,
            Err(err) => return Box::pin(fut::ready(Err(err))),
        };
        let change = async move { addr.send(ChangeState(msg.state)).await };
        Box::pin(change.into_actor(self).map(move |answer, registry, _| {
            let state = answer.map_err(|_| Error::ShuttingDown)??;
            let mut view = record::view(&registry.graph, id).ok_or(GraphError::NotFound(id))?;
            // The actor's answer is newer than any state change still in the mailbox.
            if let View::Container(container) = &mut view {
                container.state = Some(state);
            }
            Ok(view)
        }))
    }
}

//! The registry's object graph as plain data: ids, names, holders and garbage collection.
//!
//! Every object is a [`Node`] that lists who holds it ([`Holder`]) and which objects it holds
//! (`deps`). An object lives exactly as long as something holds it: the client that POSTed it, a
//! parent that uses it, or a create still in progress. Creates are transactions, so a nested create
//! registers its objects bottom-up, each right before its kernel step, and they all become visible
//! together on [`Graph::commit`] or vanish together on [`Graph::abort`].
//!
//! Whenever nodes go away they are returned as [`Removed`] in release order: a node always comes
//! before every node it depended on, so the engine can tear down kernel resources in that order (an
//! overlay before its lowers, a mount before its loop device).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::wire::Id;

/// The kind of a registered object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    Attach,
    Mount,
    Container,
}

impl ObjectKind {
    /// The kind as the wire contract and the messages spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Attach => "attach",
            ObjectKind::Mount => "mount",
            ObjectKind::Container => "container",
        }
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A create transaction, from [`Graph::begin`] until [`Graph::commit`] or [`Graph::abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxnId(u64);

/// One reference that keeps a node alive; a node's `refs` is the number of its holders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// The client that created the object with its own POST.
    User,
    /// The object with this id uses it, whether it created it nested or referenced it by id.
    Parent(Id),
    /// A create in progress referenced it by id or registered it and has not finished yet.
    Pending(TxnId),
}

/// A registered object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node<R> {
    /// The object's id.
    pub id: Id,
    /// The object's kind.
    pub kind: ObjectKind,
    /// The object's name, unique among all live nodes.
    pub name: Option<String>,
    /// Who keeps the object alive, one entry per reference.
    pub holders: Vec<Holder>,
    /// The objects this one holds, in the order given at creation; an id appears once per use.
    pub deps: Vec<Id>,
    /// The engine's record of the object.
    pub record: R,
    /// The create transaction that registered the node, until it commits.
    txn: Option<TxnId>,
}

impl<R> Node<R> {
    /// The same node with its record turned into another type (a stored one into a live one).
    pub fn try_map<S, E>(self, convert: impl FnOnce(R) -> Result<S, E>) -> Result<Node<S>, E> {
        Ok(Node {
            id: self.id,
            kind: self.kind,
            name: self.name,
            holders: self.holders,
            deps: self.deps,
            record: convert(self.record)?,
            txn: self.txn,
        })
    }

    /// Whether the node belongs to a create still in progress, and so is invisible to clients.
    pub fn is_pending(&self) -> bool {
        self.txn.is_some()
    }
}

/// A node taken out of the graph, for the engine to release its kernel resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed<R> {
    /// The removed object's id.
    pub id: Id,
    /// The removed object's kind.
    pub kind: ObjectKind,
    /// The removed object's name, now free again.
    pub name: Option<String>,
    /// What the removed object used: released only after it.
    pub deps: Vec<Id>,
    /// The engine's record of the object.
    pub record: R,
}

/// Why a graph operation was refused; the messages are meant for clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// No visible object has this id.
    #[error("object {0} does not exist")]
    NotFound(Id),
    /// A reference by id names an object of another kind.
    #[error("object {id} is of kind {found}, not {expected}")]
    WrongKind {
        id: Id,
        expected: ObjectKind,
        found: ObjectKind,
    },
    /// Another live object already has this name.
    #[error("name {0:?} is already taken")]
    NameTaken(String),
    /// Something besides the client that created it still holds the object.
    #[error("{kind} {id} is in use by {}", describe_users(.users, .holders))]
    InUse {
        id: Id,
        kind: ObjectKind,
        holders: Vec<Holder>,
        /// The objects among `holders` that use it, once each, with their kinds.
        users: Vec<(ObjectKind, Id)>,
    },
    /// An object a create in progress relied on was deleted (by force) in the meantime.
    #[error("object {0} was deleted while a create using it was in progress")]
    DependencyGone(Id),
}

/// Lists who keeps an object busy, for [`GraphError::InUse`].
fn describe_users(users: &[(ObjectKind, Id)], holders: &[Holder]) -> String {
    let mut parts: Vec<String> = users
        .iter()
        .map(|(kind, id)| format!("{kind} {id}"))
        .collect();
    if holders.iter().any(|h| matches!(h, Holder::Pending(_))) {
        parts.push("a create in progress".to_owned());
    }
    if parts.is_empty() {
        // Only reachable if the engine committed a create holding one object twice.
        parts.push("another holder".to_owned());
    }
    parts.join(", ")
}

/// All registered objects and who holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Graph<R> {
    nodes: BTreeMap<Id, Node<R>>,
    next_id: Id,
    next_txn: u64,
    /// The nodes changed, added or removed since the last [`Graph::take_changed`]: what an
    /// incremental store must write. Not part of the graph's value.
    #[serde(skip)]
    changed: BTreeSet<Id>,
}

impl<R: PartialEq> PartialEq for Graph<R> {
    fn eq(&self, other: &Self) -> bool {
        self.nodes == other.nodes
            && self.next_id == other.next_id
            && self.next_txn == other.next_txn
    }
}

/// The graph's id and transaction counters, stored with every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_id: Id,
    pub next_txn: u64,
}

impl<R> Default for Graph<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<R> Graph<R> {
    /// An empty graph whose first id is 1.
    pub fn new() -> Self {
        Graph {
            nodes: BTreeMap::new(),
            next_id: 1,
            next_txn: 1,
            changed: BTreeSet::new(),
        }
    }

    /// The ids of the nodes changed, added or removed since the last call; a node listed that
    /// [`Graph::get_any`] no longer finds was removed.
    pub fn take_changed(&mut self) -> BTreeSet<Id> {
        std::mem::take(&mut self.changed)
    }

    /// The id and transaction counters.
    pub fn counters(&self) -> Counters {
        Counters {
            next_id: self.next_id,
            next_txn: self.next_txn,
        }
    }

    /// Replays a stored change: sets the counters, puts the nodes as stored (replacing any with
    /// the same id) and removes the `gone` ones. The replayed nodes do not count as changed.
    pub fn replay(
        &mut self,
        counters: Counters,
        put: impl IntoIterator<Item = Node<R>>,
        gone: impl IntoIterator<Item = Id>,
    ) {
        self.next_id = counters.next_id;
        self.next_txn = counters.next_txn;
        for node in put {
            self.nodes.insert(node.id, node);
        }
        for id in gone {
            self.nodes.remove(&id);
        }
    }

    /// The same graph with every record turned into another type (a stored one into a live one).
    pub fn try_map<S, E>(
        self,
        mut convert: impl FnMut(Id, R) -> Result<S, E>,
    ) -> Result<Graph<S>, E> {
        let mut nodes = BTreeMap::new();
        for (id, node) in self.nodes {
            nodes.insert(id, node.try_map(|record| convert(id, record))?);
        }
        Ok(Graph {
            nodes,
            next_id: self.next_id,
            next_txn: self.next_txn,
            changed: self.changed,
        })
    }

    /// Starts a create transaction.
    pub fn begin(&mut self) -> TxnId {
        let txn = TxnId(self.next_txn);
        self.next_txn += 1;
        txn
    }

    /// Holds the object `id`, referenced by id inside the request of `txn`, until the txn ends or
    /// a [`Graph::reserve`] turns the hold into a parent's.
    ///
    /// The object must be visible or registered by the same txn, and be of `kind`.
    pub fn hold(&mut self, txn: TxnId, id: Id, kind: ObjectKind) -> Result<(), GraphError> {
        let node = self
            .nodes
            .get_mut(&id)
            .filter(|node| node.txn.is_none() || node.txn == Some(txn))
            .ok_or(GraphError::NotFound(id))?;
        if node.kind != kind {
            return Err(GraphError::WrongKind {
                id,
                expected: kind,
                found: node.kind,
            });
        }
        node.holders.push(Holder::Pending(txn));
        self.changed.insert(id);
        Ok(())
    }

    /// Registers a new object for `txn`, right before its kernel step, and returns its id.
    ///
    /// Each of `deps` must carry a hold of `txn` (from [`Graph::hold`] or from an earlier reserve
    /// of the txn), one per occurrence; each such hold becomes a hold of the new object. The new
    /// object is held by the txn and stays invisible until [`Graph::commit`]. On error nothing
    /// changes.
    pub fn reserve(
        &mut self,
        txn: TxnId,
        kind: ObjectKind,
        name: Option<String>,
        record: R,
        deps: &[Id],
    ) -> Result<Id, GraphError> {
        if let Some(name) = &name {
            if self
                .nodes
                .values()
                .any(|node| node.name.as_ref() == Some(name))
            {
                return Err(GraphError::NameTaken(name.clone()));
            }
        }
        // Check every dep before changing anything, so a refused reserve leaves the graph as it was.
        let pending = Holder::Pending(txn);
        for &dep in deps {
            let needed = deps.iter().filter(|&&d| d == dep).count();
            let held = self.nodes.get(&dep).map_or(0, |node| {
                node.holders.iter().filter(|&&h| h == pending).count()
            });
            if held < needed {
                return Err(GraphError::DependencyGone(dep));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        for dep in deps {
            if let Some(hold) = self
                .nodes
                .get_mut(dep)
                .and_then(|node| node.holders.iter_mut().find(|h| **h == pending))
            {
                *hold = Holder::Parent(id);
                self.changed.insert(*dep);
            }
        }
        self.changed.insert(id);
        self.nodes.insert(
            id,
            Node {
                id,
                kind,
                name,
                holders: vec![pending],
                deps: deps.to_vec(),
                record,
                txn: Some(txn),
            },
        );
        Ok(id)
    }

    /// Finishes `txn`: its objects become visible and its remaining holds (normally just the one
    /// on the top-level object) become the client's.
    pub fn commit(&mut self, txn: TxnId) {
        for node in self.nodes.values_mut() {
            let mut changed = false;
            if node.txn == Some(txn) {
                node.txn = None;
                changed = true;
            }
            for holder in &mut node.holders {
                if *holder == Holder::Pending(txn) {
                    *holder = Holder::User;
                    changed = true;
                }
            }
            if changed {
                self.changed.insert(node.id);
            }
        }
    }

    /// Cancels `txn`: drops all its holds and removes its objects (and anything only they held),
    /// returned in release order. Objects it referenced by id keep their other holders.
    pub fn abort(&mut self, txn: TxnId) -> Vec<Removed<R>> {
        let mut orphans = Vec::new();
        for node in self.nodes.values_mut() {
            let before = node.holders.len();
            node.holders.retain(|&h| h != Holder::Pending(txn));
            if node.holders.len() != before {
                self.changed.insert(node.id);
            }
            if node.holders.is_empty() {
                orphans.push(node.id);
            }
        }
        self.release(orphans)
    }

    /// Deletes the visible object `id` for the client and returns what went away, in release order.
    ///
    /// Without `force` only an object held by nothing but its client goes. With `force` its users
    /// go too (transitively, each before what it holds), and creates in progress lose their holds
    /// on all of them. Dependencies nothing holds any more are collected.
    pub fn delete(&mut self, id: Id, force: bool) -> Result<Vec<Removed<R>>, GraphError> {
        let node = self.get(id).ok_or(GraphError::NotFound(id))?;
        if !force {
            if node.holders != [Holder::User] {
                return Err(self.in_use(node));
            }
            if let Some(node) = self.nodes.get_mut(&id) {
                node.holders.clear();
                self.changed.insert(id);
            }
            return Ok(self.release([id]));
        }
        // Everything that uses the object, directly or not, goes with it.
        let mut doomed = BTreeSet::from([id]);
        let mut queue = vec![id];
        while let Some(current) = queue.pop() {
            for user in self.users(current) {
                if doomed.insert(user) {
                    queue.push(user);
                }
            }
        }
        // Doomed nodes keep only the holds of their (doomed) users, so the release below takes
        // users before what they use.
        let mut orphans = Vec::new();
        for &doomed_id in &doomed {
            if let Some(node) = self.nodes.get_mut(&doomed_id) {
                node.holders.retain(|h| matches!(h, Holder::Parent(_)));
                self.changed.insert(doomed_id);
                if node.holders.is_empty() {
                    orphans.push(doomed_id);
                }
            }
        }
        Ok(self.release(orphans))
    }

    /// Aborts every create still in progress (after a restart: the creates the previous run did
    /// not finish), returning what they made in release order.
    pub fn abort_pending(&mut self) -> Vec<Removed<R>> {
        let mut txns: Vec<TxnId> = self
            .nodes
            .values()
            .flat_map(|node| {
                node.txn
                    .into_iter()
                    .chain(node.holders.iter().filter_map(|h| match h {
                        Holder::Pending(txn) => Some(*txn),
                        _ => None,
                    }))
            })
            .collect();
        txns.sort();
        txns.dedup();
        txns.into_iter().flat_map(|txn| self.abort(txn)).collect()
    }

    /// Removes every node, visible or pending, in release order (at shutdown).
    pub fn drain_all(&mut self) -> Vec<Removed<R>> {
        let mut orphans = Vec::new();
        for node in self.nodes.values_mut() {
            node.holders.retain(|h| matches!(h, Holder::Parent(_)));
            self.changed.insert(node.id);
            if node.holders.is_empty() {
                orphans.push(node.id);
            }
        }
        self.release(orphans)
    }

    /// The visible object `id`.
    pub fn get(&self, id: Id) -> Option<&Node<R>> {
        self.nodes.get(&id).filter(|node| !node.is_pending())
    }

    /// The object `id`, visible or still pending.
    pub fn get_any(&self, id: Id) -> Option<&Node<R>> {
        self.nodes.get(&id)
    }

    /// The record of object `id`, visible or still pending (counted as changed).
    pub fn record_mut(&mut self, id: Id) -> Option<&mut R> {
        let node = self.nodes.get_mut(&id)?;
        self.changed.insert(id);
        Some(&mut node.record)
    }

    /// The visible object called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Node<R>> {
        self.iter().find(|node| node.name.as_deref() == Some(name))
    }

    /// The visible objects in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Node<R>> {
        self.nodes.values().filter(|node| !node.is_pending())
    }

    /// How many holders keep object `id` (visible or pending) alive.
    pub fn refs(&self, id: Id) -> Option<i64> {
        self.nodes
            .get(&id)
            .map(|node| i64::try_from(node.holders.len()).unwrap_or(i64::MAX))
    }

    /// The ids of the objects that use object `id`, once each, in the order they took it.
    pub fn users(&self, id: Id) -> Vec<Id> {
        let mut users = Vec::new();
        for holder in self.nodes.get(&id).map_or(&[][..], |node| &node.holders) {
            if let Holder::Parent(parent) = *holder {
                if !users.contains(&parent) {
                    users.push(parent);
                }
            }
        }
        users
    }

    /// The id the next [`Graph::reserve`] will hand out.
    pub fn next_id(&self) -> Id {
        self.next_id
    }

    /// Whether no node, visible or pending, is left.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The refusal to delete `node`, naming its users.
    fn in_use(&self, node: &Node<R>) -> GraphError {
        let users = self
            .users(node.id)
            .into_iter()
            .filter_map(|user| self.nodes.get(&user).map(|parent| (parent.kind, user)))
            .collect();
        GraphError::InUse {
            id: node.id,
            kind: node.kind,
            holders: node.holders.clone(),
            users,
        }
    }

    /// Removes the holder-less `orphans` and, recursively, every dep left without holders.
    ///
    /// A node is removed only once nothing holds it, so it comes after every node that held it.
    fn release(&mut self, orphans: impl IntoIterator<Item = Id>) -> Vec<Removed<R>> {
        let mut queue: VecDeque<Id> = orphans.into_iter().collect();
        let mut removed = Vec::new();
        while let Some(id) = queue.pop_front() {
            let Entry::Occupied(entry) = self.nodes.entry(id) else {
                continue;
            };
            if !entry.get().holders.is_empty() {
                continue;
            }
            let node = entry.remove();
            self.changed.insert(id);
            for &dep in &node.deps {
                if let Some(dep_node) = self.nodes.get_mut(&dep) {
                    if let Some(at) = dep_node
                        .holders
                        .iter()
                        .position(|&h| h == Holder::Parent(id))
                    {
                        dep_node.holders.remove(at);
                        self.changed.insert(dep);
                    }
                    if dep_node.holders.is_empty() {
                        queue.push_back(dep);
                    }
                }
            }
            removed.push(Removed {
                id,
                kind: node.kind,
                name: node.name,
                deps: node.deps,
                record: node.record,
            });
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ObjectKind::{Attach, Container, Mount};

    /// Registers a whole nested create bottom-up, each object holding the one before, and commits it.
    fn create_chain(
        graph: &mut Graph<&'static str>,
        chain: &[(ObjectKind, &'static str)],
    ) -> Vec<Id> {
        let txn = graph.begin();
        let mut ids: Vec<Id> = Vec::new();
        for &(kind, record) in chain {
            let deps: Vec<Id> = ids.last().copied().into_iter().collect();
            ids.push(graph.reserve(txn, kind, None, record, &deps).unwrap());
        }
        graph.commit(txn);
        ids
    }

    fn removed_ids<R>(removed: &[Removed<R>]) -> Vec<Id> {
        removed.iter().map(|r| r.id).collect()
    }

    #[test]
    fn nested_create_registers_bottom_up_and_shows_on_commit() {
        let mut graph = Graph::new();
        let txn = graph.begin();
        let loopback = graph.reserve(txn, Attach, None, "loop", &[]).unwrap();
        let attach_mount = graph
            .reserve(txn, Mount, None, "attach", &[loopback])
            .unwrap();
        let overlay = graph
            .reserve(txn, Mount, None, "overlay", &[attach_mount])
            .unwrap();
        let name = Some("c".to_owned());
        let container = graph
            .reserve(txn, Container, name, "ctr", &[overlay])
            .unwrap();
        assert_eq!((loopback, attach_mount, overlay, container), (1, 2, 3, 4));

        // Nothing is visible while the create runs, but the engine can reach its records.
        assert_eq!(graph.iter().count(), 0);
        assert!(graph.get(container).is_none());
        assert!(graph.by_name("c").is_none());
        assert!(graph.get_any(container).unwrap().is_pending());
        *graph.record_mut(overlay).unwrap() = "overlay done";

        graph.commit(txn);
        assert_eq!(graph.iter().map(|n| n.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(graph.get(container).unwrap().holders, [Holder::User]);
        assert_eq!(graph.get(overlay).unwrap().holders, [Holder::Parent(4)]);
        assert_eq!(graph.get(overlay).unwrap().record, "overlay done");
        assert_eq!(graph.get(loopback).unwrap().holders, [Holder::Parent(2)]);
        assert_eq!(graph.by_name("c").unwrap().id, container);
        assert!(graph
            .iter()
            .all(|n| !n.is_pending() && graph.refs(n.id) == Some(1)));
        assert_eq!(graph.next_id(), 5);
    }

    #[test]
    fn reference_by_id_adds_a_hold_and_gives_it_back() {
        let mut graph = Graph::new();
        let [attach, mount] = create_chain(&mut graph, &[(Attach, "a"), (Mount, "m")])[..] else {
            unreachable!()
        };

        let txn = graph.begin();
        graph.hold(txn, mount, Mount).unwrap();
        assert_eq!(
            graph.get(mount).unwrap().holders,
            [Holder::User, Holder::Pending(txn)]
        );
        let container = graph.reserve(txn, Container, None, "c", &[mount]).unwrap();
        graph.commit(txn);
        assert_eq!(
            graph.get(mount).unwrap().holders,
            [Holder::User, Holder::Parent(container)]
        );
        assert_eq!(graph.refs(mount), Some(2));
        assert_eq!(graph.users(mount), [container]);

        let removed = graph.delete(container, false).unwrap();
        assert_eq!(removed_ids(&removed), [container]);
        assert_eq!(removed[0].record, "c");
        assert_eq!(graph.get(mount).unwrap().holders, [Holder::User]);
        assert_eq!(graph.refs(attach), Some(1));
    }

    #[test]
    fn reads_do_not_change_holders() {
        let mut graph = Graph::new();
        let txn = graph.begin();
        let attach = graph.reserve(txn, Attach, None, "a", &[]).unwrap();
        let name = Some("m".to_owned());
        let mount = graph.reserve(txn, Mount, name, "m", &[attach]).unwrap();
        graph.commit(txn);
        let before = graph.clone();
        for _ in 0..3 {
            assert!(graph.get(mount).is_some());
            assert!(graph.get_any(attach).is_some());
            assert!(graph.by_name("m").is_some());
            assert_eq!(graph.iter().count(), 2);
            assert_eq!(graph.refs(attach), Some(1));
            assert_eq!(graph.users(attach), [mount]);
        }
        assert_eq!(graph, before);
    }

    #[test]
    fn delete_refuses_objects_in_use() {
        let mut graph = Graph::new();
        let [attach, mount] = create_chain(&mut graph, &[(Attach, "a"), (Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, mount, Mount).unwrap();
        let container = graph.reserve(txn, Container, None, "c", &[mount]).unwrap();
        graph.commit(txn);
        let txn = graph.begin();
        let before = graph.clone();

        let err = graph.delete(mount, false).unwrap_err();
        assert_eq!(
            err,
            GraphError::InUse {
                id: mount,
                kind: Mount,
                holders: vec![Holder::User, Holder::Parent(container)],
                users: vec![(Container, container)],
            }
        );
        assert_eq!(err.to_string(), "mount 2 is in use by container 3");
        // A nested child belongs to its parent, even though only the parent holds it.
        let err = graph.delete(attach, false).unwrap_err();
        assert_eq!(err.to_string(), "attach 1 is in use by mount 2");
        // A create in progress keeps its references busy too.
        graph.hold(txn, container, Container).unwrap();
        let err = graph.delete(container, false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "container 3 is in use by a create in progress"
        );
        graph.abort(txn);
        assert_eq!(graph, before);
    }

    #[test]
    fn delete_knows_only_visible_objects() {
        let mut graph = Graph::new();
        let txn = graph.begin();
        let pending = graph.reserve(txn, Mount, None, "m", &[]).unwrap();
        assert_eq!(
            graph.delete(pending, true),
            Err(GraphError::NotFound(pending))
        );
        assert_eq!(graph.delete(99, false), Err(GraphError::NotFound(99)));
        assert_eq!(
            graph.delete(99, false).unwrap_err().to_string(),
            "object 99 does not exist"
        );
    }

    #[test]
    fn forced_delete_takes_users_first_then_collects() {
        let mut graph = Graph::new();
        // Mount 2 on attach 1; overlay 3 references mount 2, container 4 owns the overlay.
        let [attach, mount] = create_chain(&mut graph, &[(Attach, "a"), (Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, mount, Mount).unwrap();
        let overlay = graph.reserve(txn, Mount, None, "o", &[mount]).unwrap();
        let container = graph
            .reserve(txn, Container, None, "c", &[overlay])
            .unwrap();
        graph.commit(txn);
        // An unrelated object survives.
        let [other] = create_chain(&mut graph, &[(Attach, "x")])[..] else {
            unreachable!()
        };

        let removed = graph.delete(mount, true).unwrap();
        assert_eq!(removed_ids(&removed), [container, overlay, mount, attach]);
        assert_eq!(graph.iter().map(|n| n.id).collect::<Vec<_>>(), [other]);
    }

    #[test]
    fn forced_delete_fails_the_create_that_referenced_it() {
        let mut graph = Graph::new();
        let [mount] = create_chain(&mut graph, &[(Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        let attach = graph.reserve(txn, Attach, None, "a", &[]).unwrap();
        graph.hold(txn, mount, Mount).unwrap();
        assert_eq!(removed_ids(&graph.delete(mount, true).unwrap()), [mount]);

        let before = graph.clone();
        let err = graph.reserve(txn, Mount, None, "o", &[attach, mount]);
        assert_eq!(err, Err(GraphError::DependencyGone(mount)));
        assert_eq!(graph, before);
        assert_eq!(removed_ids(&graph.abort(txn)), [attach]);
        assert!(graph.is_empty());
    }

    #[test]
    fn abort_releases_only_the_txns_nodes_and_ids_are_not_reused() {
        let mut graph = Graph::new();
        let [mount] = create_chain(&mut graph, &[(Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, mount, Mount).unwrap();
        let attach = graph.reserve(txn, Attach, None, "a", &[]).unwrap();
        let lower = graph.reserve(txn, Mount, None, "l", &[attach]).unwrap();
        let overlay = graph
            .reserve(txn, Mount, None, "o", &[lower, mount])
            .unwrap();
        assert_eq!(graph.refs(mount), Some(2));

        let removed = graph.abort(txn);
        assert_eq!(removed_ids(&removed), [overlay, lower, attach]);
        assert_eq!(graph.get(mount).unwrap().holders, [Holder::User]);
        let [next] = create_chain(&mut graph, &[(Attach, "n")])[..] else {
            unreachable!()
        };
        assert_eq!(next, overlay + 1);
    }

    #[test]
    fn abort_collects_a_visible_object_only_the_txn_still_held() {
        let mut graph = Graph::new();
        let [attach, mount] = create_chain(&mut graph, &[(Attach, "a"), (Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, attach, Attach).unwrap();
        // The attach outlives its parent while the create holds it, and goes when it gives up.
        assert_eq!(removed_ids(&graph.delete(mount, false).unwrap()), [mount]);
        assert_eq!(graph.get(attach).unwrap().holders, [Holder::Pending(txn)]);
        assert_eq!(removed_ids(&graph.abort(txn)), [attach]);
        assert!(graph.is_empty());
    }

    #[test]
    fn the_same_dependency_twice_is_held_twice() {
        let mut graph = Graph::new();
        let [lower] = create_chain(&mut graph, &[(Mount, "l")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, lower, Mount).unwrap();
        // One hold cannot serve two uses.
        let err = graph.reserve(txn, Mount, None, "o", &[lower, lower]);
        assert_eq!(err, Err(GraphError::DependencyGone(lower)));
        graph.hold(txn, lower, Mount).unwrap();
        let overlay = graph
            .reserve(txn, Mount, None, "o", &[lower, lower])
            .unwrap();
        graph.commit(txn);
        let holders = [
            Holder::User,
            Holder::Parent(overlay),
            Holder::Parent(overlay),
        ];
        assert_eq!(graph.get(lower).unwrap().holders, holders);
        assert_eq!(graph.users(lower), [overlay]);
        assert_eq!(
            graph.delete(lower, false).unwrap_err().to_string(),
            "mount 1 is in use by mount 2"
        );
        assert_eq!(
            removed_ids(&graph.delete(overlay, false).unwrap()),
            [overlay]
        );
        assert_eq!(graph.get(lower).unwrap().holders, [Holder::User]);
    }

    #[test]
    fn hold_checks_visibility_and_kind() {
        let mut graph = Graph::new();
        let [mount] = create_chain(&mut graph, &[(Mount, "m")])[..] else {
            unreachable!()
        };
        let other = graph.begin();
        let foreign = graph.reserve(other, Attach, None, "f", &[]).unwrap();
        let txn = graph.begin();
        let own = graph.reserve(txn, Attach, None, "o", &[]).unwrap();
        let before = graph.clone();

        let err = graph.hold(txn, mount, Attach).unwrap_err();
        assert_eq!(
            err,
            GraphError::WrongKind {
                id: mount,
                expected: Attach,
                found: Mount,
            }
        );
        assert_eq!(err.to_string(), "object 1 is of kind mount, not attach");
        assert_eq!(
            graph.hold(txn, foreign, Attach),
            Err(GraphError::NotFound(foreign))
        );
        assert_eq!(graph.hold(txn, 42, Attach), Err(GraphError::NotFound(42)));
        assert_eq!(graph, before);
        graph.hold(txn, own, Attach).unwrap();
        assert_eq!(graph.refs(own), Some(2));
    }

    #[test]
    fn names_are_unique_among_live_objects() {
        let mut graph: Graph<()> = Graph::new();
        let txn = graph.begin();
        let first = graph
            .reserve(txn, Container, Some("web".into()), (), &[])
            .unwrap();
        // Taken while still pending, by another create too.
        let other = graph.begin();
        let err = graph
            .reserve(other, Container, Some("web".into()), (), &[])
            .unwrap_err();
        assert_eq!(err.to_string(), "name \"web\" is already taken");
        graph.commit(txn);
        assert_eq!(graph.by_name("web").unwrap().id, first);
        assert!(graph.by_name("db").is_none());
        let err = graph.reserve(other, Container, Some("web".into()), (), &[]);
        assert_eq!(err, Err(GraphError::NameTaken("web".into())));

        let removed = graph.delete(first, false).unwrap();
        assert_eq!(removed[0].name.as_deref(), Some("web"));
        let second = graph
            .reserve(other, Container, Some("web".into()), (), &[])
            .unwrap();
        graph.commit(other);
        assert_eq!(graph.by_name("web").unwrap().id, second);
        assert!(second > first);
    }

    #[test]
    fn drain_all_releases_everything_in_order() {
        let mut graph = Graph::new();
        let [attach, mount] = create_chain(&mut graph, &[(Attach, "a"), (Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, mount, Mount).unwrap();
        let container = graph.reserve(txn, Container, None, "c", &[mount]).unwrap();
        let removed = graph.drain_all();
        assert_eq!(removed_ids(&removed), [container, mount, attach]);
        assert!(graph.is_empty());
        assert_eq!(graph.next_id(), container + 1);
    }

    #[test]
    fn the_graph_round_trips_through_json() {
        let mut graph = Graph::new();
        let [_, mount] = create_chain(&mut graph, &[(Attach, "a"), (Mount, "m")])[..] else {
            unreachable!()
        };
        let txn = graph.begin();
        graph.hold(txn, mount, Mount).unwrap();
        let json = serde_json::to_string(&graph).unwrap();
        let back: Graph<&str> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, graph);
        let holders = serde_json::to_value(&back.get(mount).unwrap().holders).unwrap();
        assert_eq!(holders, serde_json::json!(["user", {"pending": 2}]));
        assert_eq!(serde_json::to_value(Container).unwrap(), "container");
        assert_eq!(Container.as_str(), "container");
    }
}

/// Model-based property tests: random sequences of creates, references, commits, aborts and
/// deletes, checked after every step against holders derived independently of the graph.
#[cfg(test)]
mod model_tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Begin,
        /// Reference by id: `target` picks an object, live or not.
        Hold {
            txn: usize,
            target: usize,
            wrong_kind: bool,
        },
        /// Registers an object taking some of the txn's holds, maybe plus a `stray` id it lacks.
        Reserve {
            txn: usize,
            kind: ObjectKind,
            name: Option<u8>,
            deps: Vec<usize>,
            stray: Option<usize>,
        },
        /// Ends a txn as the engine would: a top-level object takes every remaining hold, then
        /// commit (or abort when there is nothing to commit).
        Finish {
            txn: usize,
            name: Option<u8>,
        },
        Abort {
            txn: usize,
        },
        Delete {
            target: usize,
            force: bool,
        },
        Read {
            target: usize,
        },
    }

    fn kind() -> impl Strategy<Value = ObjectKind> {
        prop_oneof![
            Just(ObjectKind::Attach),
            Just(ObjectKind::Mount),
            Just(ObjectKind::Container)
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        let name = || prop::option::weighted(0.3, 0u8..3);
        prop_oneof![
            1 => Just(Op::Begin),
            3 => (any::<usize>(), any::<usize>(), prop::bool::weighted(0.1))
                .prop_map(|(txn, target, wrong_kind)| Op::Hold { txn, target, wrong_kind }),
            6 => (
                any::<usize>(),
                kind(),
                name(),
                vec(any::<usize>(), 0..4),
                prop::option::weighted(0.1, any::<usize>()),
            )
                .prop_map(|(txn, kind, name, deps, stray)| Op::Reserve { txn, kind, name, deps, stray }),
            3 => (any::<usize>(), name()).prop_map(|(txn, name)| Op::Finish { txn, name }),
            1 => any::<usize>().prop_map(|txn| Op::Abort { txn }),
            3 => (any::<usize>(), any::<bool>()).prop_map(|(target, force)| Op::Delete { target, force }),
            1 => any::<usize>().prop_map(|target| Op::Read { target }),
        ]
    }

    /// An open create as the model sees it.
    #[derive(Debug, Default)]
    struct OpenTxn {
        /// Its outstanding holds, one entry per hold.
        holds: Vec<Id>,
        /// The live objects it registered.
        nodes: BTreeSet<Id>,
    }

    /// The graph under test and what it should contain, tracked without looking at it.
    #[derive(Debug)]
    struct Model {
        graph: Graph<u64>,
        /// Committed top-level objects not yet deleted: the client holds them.
        top: BTreeSet<Id>,
        txns: BTreeMap<TxnId, OpenTxn>,
        /// Deps, kind and name of every object ever registered.
        deps: BTreeMap<Id, Vec<Id>>,
        meta: BTreeMap<Id, (ObjectKind, Option<String>)>,
        alive: BTreeSet<Id>,
        next_id: Id,
        /// The graph as an incremental store holds it: only the changed nodes replayed.
        stored: Graph<u64>,
    }

    impl Model {
        fn new() -> Self {
            Model {
                graph: Graph::new(),
                top: BTreeSet::new(),
                txns: BTreeMap::new(),
                deps: BTreeMap::new(),
                meta: BTreeMap::new(),
                alive: BTreeSet::new(),
                next_id: 1,
                stored: Graph::new(),
            }
        }

        fn begin(&mut self) -> TxnId {
            let txn = self.graph.begin();
            assert!(self.txns.insert(txn, OpenTxn::default()).is_none());
            txn
        }

        fn pick_txn(&mut self, ix: usize) -> TxnId {
            match self.txns.keys().nth(ix % self.txns.len().max(1)) {
                Some(&txn) => txn,
                None => self.begin(),
            }
        }

        /// Mostly a live object, sometimes any id ever handed out or the next one.
        fn pick_target(&self, ix: usize) -> Id {
            let alive: Vec<Id> = self.alive.iter().copied().collect();
            if alive.is_empty() || ix.is_multiple_of(8) {
                (ix / 8 % usize::try_from(self.next_id).unwrap()) as Id + 1
            } else {
                alive[ix % alive.len()]
            }
        }

        fn pending_txn(&self, id: Id) -> Option<TxnId> {
            self.txns
                .iter()
                .find(|(_, open)| open.nodes.contains(&id))
                .map(|(&txn, _)| txn)
        }

        fn visible(&self, id: Id) -> bool {
            self.alive.contains(&id) && self.pending_txn(id).is_none()
        }

        fn expected_holders(&self, id: Id) -> Vec<Holder> {
            let mut holders = Vec::new();
            if self.top.contains(&id) {
                holders.push(Holder::User);
            }
            for &parent in &self.alive {
                let uses = self.deps[&parent].iter().filter(|&&d| d == id).count();
                holders.extend(std::iter::repeat_n(Holder::Parent(parent), uses));
            }
            for (&txn, open) in &self.txns {
                let holds = open.holds.iter().filter(|&&h| h == id).count();
                holders.extend(std::iter::repeat_n(Holder::Pending(txn), holds));
            }
            holders.sort();
            holders
        }

        /// Objects live exactly while reachable from a client's or a create's hold: updates
        /// `alive` and returns what must have been released.
        fn collect(&mut self) -> BTreeSet<Id> {
            let mut reached = BTreeSet::new();
            let mut stack: Vec<Id> = self.top.iter().copied().collect();
            stack.extend(
                self.txns
                    .values()
                    .flat_map(|open| open.holds.iter().copied()),
            );
            while let Some(id) = stack.pop() {
                if reached.insert(id) {
                    stack.extend(self.deps[&id].iter().copied());
                }
            }
            assert!(reached.is_subset(&self.alive), "nothing comes back to life");
            let released = self.alive.difference(&reached).copied().collect();
            self.alive = reached;
            for open in self.txns.values_mut() {
                open.nodes.retain(|id| self.alive.contains(id));
            }
            released
        }

        /// Checks a release list: exactly the expected objects, each once and before its deps.
        fn check_released(&self, removed: &[Removed<u64>], expected: &BTreeSet<Id>) {
            let ids: Vec<Id> = removed.iter().map(|r| r.id).collect();
            assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), *expected);
            assert_eq!(ids.len(), expected.len(), "released once each: {ids:?}");
            for (at, r) in removed.iter().enumerate() {
                let (kind, name) = &self.meta[&r.id];
                assert_eq!((r.kind, &r.name, r.record), (*kind, name, r.id as u64));
                for dep in &self.deps[&r.id] {
                    if let Some(dep_at) = ids.iter().position(|id| id == dep) {
                        assert!(
                            dep_at > at,
                            "{} released before its user {}: {ids:?}",
                            dep,
                            r.id
                        );
                    }
                }
            }
        }

        fn check(&mut self) {
            let changed = self.graph.take_changed();
            let put: Vec<Node<u64>> = changed
                .iter()
                .filter_map(|&id| self.graph.get_any(id).cloned())
                .collect();
            let gone = changed
                .iter()
                .copied()
                .filter(|&id| self.graph.get_any(id).is_none());
            self.stored.replay(self.graph.counters(), put, gone);
            assert_eq!(
                self.stored, self.graph,
                "the changed nodes are all a store needs"
            );
            let graph = &self.graph;
            assert_eq!(graph.next_id(), self.next_id);
            let live: BTreeSet<Id> = (1..self.next_id)
                .filter(|&id| graph.get_any(id).is_some())
                .collect();
            assert_eq!(live, self.alive);
            assert_eq!(graph.is_empty(), self.alive.is_empty());
            let visible: Vec<Id> = graph.iter().map(|node| node.id).collect();
            let expected_visible: Vec<Id> = self
                .alive
                .iter()
                .copied()
                .filter(|&id| self.visible(id))
                .collect();
            assert_eq!(visible, expected_visible, "visible in id order");
            for &id in &self.alive {
                let node = graph.get_any(id).unwrap();
                let (kind, name) = &self.meta[&id];
                assert_eq!(
                    (node.id, node.kind, &node.name, &node.deps),
                    (id, *kind, name, &self.deps[&id])
                );
                assert_eq!(node.is_pending(), self.pending_txn(id).is_some());
                assert_eq!(graph.get(id).is_some(), !node.is_pending());
                let mut holders = node.holders.clone();
                holders.sort();
                assert_eq!(holders, self.expected_holders(id), "holders of {id}");
                assert!(!holders.is_empty(), "{id} is live but nothing holds it");
                assert_eq!(graph.refs(id), Some(holders.len() as i64));
                for dep in &node.deps {
                    assert!(self.alive.contains(dep), "{id} holds released {dep}");
                }
            }
        }

        fn reserve(
            &mut self,
            txn: TxnId,
            kind: ObjectKind,
            name: Option<u8>,
            deps: &[Id],
        ) -> Option<Id> {
            let name = name.map(|n| format!("n{n}"));
            let holds = &self.txns[&txn].holds;
            let taken = name.as_ref().is_some_and(|name| {
                self.alive
                    .iter()
                    .any(|id| self.meta[id].1.as_ref() == Some(name))
            });
            let missing = deps.iter().copied().find(|dep| {
                let needed = deps.iter().filter(|d| *d == dep).count();
                holds.iter().filter(|h| *h == dep).count() < needed
            });
            let expected = match (taken, missing) {
                (true, _) => Some(GraphError::NameTaken(name.clone().unwrap())),
                (false, Some(dep)) => Some(GraphError::DependencyGone(dep)),
                (false, None) => None,
            };
            let before = self.graph.clone();
            let result = self
                .graph
                .reserve(txn, kind, name.clone(), self.next_id as u64, deps);
            if let Some(err) = expected {
                assert_eq!(result, Err(err));
                assert_eq!(self.graph, before, "a refused reserve changes nothing");
                return None;
            }
            let id = result.unwrap();
            assert_eq!(id, self.next_id, "ids count up by one");
            self.next_id += 1;
            let open = self.txns.get_mut(&txn).unwrap();
            for dep in deps {
                let at = open.holds.iter().position(|h| h == dep).unwrap();
                open.holds.remove(at);
            }
            open.holds.push(id);
            open.nodes.insert(id);
            self.deps.insert(id, deps.to_vec());
            self.meta.insert(id, (kind, name));
            self.alive.insert(id);
            Some(id)
        }

        fn abort(&mut self, txn: TxnId) {
            let removed = self.graph.abort(txn);
            self.txns.remove(&txn);
            let expected = self.collect();
            self.check_released(&removed, &expected);
        }

        fn delete(&mut self, id: Id, force: bool) {
            let before = self.graph.clone();
            let result = self.graph.delete(id, force);
            if !self.visible(id) {
                assert_eq!(result, Err(GraphError::NotFound(id)));
                assert_eq!(self.graph, before);
                return;
            }
            if !force {
                if self.expected_holders(id) != [Holder::User] {
                    let holders = before.get(id).unwrap().holders.clone();
                    assert!(
                        matches!(&result, Err(GraphError::InUse { id: i, holders: h, .. }) if *i == id && *h == holders),
                        "{result:?}"
                    );
                    assert_eq!(self.graph, before, "a refused delete changes nothing");
                    return;
                }
                self.top.remove(&id);
            } else {
                let mut doomed = BTreeSet::from([id]);
                let mut stack = vec![id];
                while let Some(current) = stack.pop() {
                    for &user in &self.alive {
                        if self.deps[&user].contains(&current) && doomed.insert(user) {
                            stack.push(user);
                        }
                    }
                }
                self.top.retain(|id| !doomed.contains(id));
                for open in self.txns.values_mut() {
                    open.holds.retain(|id| !doomed.contains(id));
                }
                let expected = self.collect();
                assert!(doomed.is_subset(&expected));
                self.check_released(&result.unwrap(), &expected);
                return;
            }
            let expected = self.collect();
            assert!(expected.contains(&id));
            self.check_released(&result.unwrap(), &expected);
        }

        fn apply(&mut self, op: &Op) {
            match *op {
                Op::Begin => {
                    self.begin();
                }
                Op::Hold {
                    txn,
                    target,
                    wrong_kind,
                } => {
                    let txn = self.pick_txn(txn);
                    let id = self.pick_target(target);
                    let actual = self.meta.get(&id).map_or(ObjectKind::Attach, |m| m.0);
                    let kind = match (wrong_kind, actual) {
                        (false, kind) => kind,
                        (true, ObjectKind::Attach) => ObjectKind::Mount,
                        (true, _) => ObjectKind::Attach,
                    };
                    let expected = if !self.alive.contains(&id)
                        || self.pending_txn(id).is_some_and(|owner| owner != txn)
                    {
                        Err(GraphError::NotFound(id))
                    } else if wrong_kind {
                        Err(GraphError::WrongKind {
                            id,
                            expected: kind,
                            found: actual,
                        })
                    } else {
                        Ok(())
                    };
                    let before = self.graph.clone();
                    assert_eq!(self.graph.hold(txn, id, kind), expected);
                    if expected.is_ok() {
                        self.txns.get_mut(&txn).unwrap().holds.push(id);
                    } else {
                        assert_eq!(self.graph, before);
                    }
                }
                Op::Reserve {
                    txn,
                    kind,
                    name,
                    ref deps,
                    stray,
                } => {
                    let txn = self.pick_txn(txn);
                    let holds = &self.txns[&txn].holds;
                    let positions: BTreeSet<usize> = if holds.is_empty() {
                        BTreeSet::new()
                    } else {
                        deps.iter().map(|ix| ix % holds.len()).collect()
                    };
                    let mut deps: Vec<Id> = positions.into_iter().map(|at| holds[at]).collect();
                    deps.extend(stray.map(|ix| self.pick_target(ix)));
                    self.reserve(txn, kind, name, &deps);
                }
                Op::Finish { txn, name } => {
                    let txn = self.pick_txn(txn);
                    let open = &self.txns[&txn];
                    let single_top = open.holds.len() == 1 && open.nodes.contains(&open.holds[0]);
                    if !single_top && !open.holds.is_empty() {
                        let deps = open.holds.clone();
                        self.reserve(txn, ObjectKind::Container, name, &deps);
                    }
                    let open = &self.txns[&txn];
                    if open.holds.len() == 1 && open.nodes.contains(&open.holds[0]) {
                        self.graph.commit(txn);
                        let open = self.txns.remove(&txn).unwrap();
                        self.top.insert(open.holds[0]);
                    } else {
                        self.abort(txn);
                    }
                }
                Op::Abort { txn } => {
                    let txn = self.pick_txn(txn);
                    self.abort(txn);
                }
                Op::Delete { target, force } => self.delete(self.pick_target(target), force),
                Op::Read { target } => {
                    let id = self.pick_target(target);
                    let before = self.graph.clone();
                    let graph = &self.graph;
                    let _ = (
                        graph.get(id),
                        graph.get_any(id),
                        graph.refs(id),
                        graph.users(id),
                    );
                    for &id in &self.alive {
                        if let Some(name) = &self.meta[&id].1 {
                            let found = graph.by_name(name).map(|node| node.id);
                            assert_eq!(found, self.visible(id).then_some(id));
                        }
                    }
                    assert_eq!(self.graph, before, "reads change nothing");
                }
            }
            self.check();
        }
    }

    proptest! {
        #[test]
        fn random_operations_keep_the_invariants(ops in vec(op(), 1..80)) {
            let mut model = Model::new();
            for op in &ops {
                model.apply(op);
            }
            // Give up the creates in progress, then delete every top-level object as a client
            // would: the newest one is never used by anything, so plain deletes get everything.
            while let Some(&txn) = model.txns.keys().next() {
                model.abort(txn);
                model.check();
            }
            while let Some(&id) = model.top.last() {
                model.delete(id, false);
                prop_assert!(!model.top.contains(&id), "{} was refused", id);
                model.check();
            }
            prop_assert!(model.graph.is_empty());
        }

        #[test]
        fn drain_all_and_persistence(ops in vec(op(), 1..80)) {
            let mut model = Model::new();
            for op in &ops {
                model.apply(op);
            }
            let json = serde_json::to_string(&model.graph).unwrap();
            let back: Graph<u64> = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&back, &model.graph);

            let removed = model.graph.drain_all();
            model.top.clear();
            model.txns.clear();
            let expected = model.collect();
            model.check_released(&removed, &expected);
            prop_assert!(model.graph.is_empty());
        }
    }
}

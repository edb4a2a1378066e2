//! Generation slots shared fairly between peers.
//!
//! Slots go to waiting requests first come first served, except that a peer already holding
//! its fair share (the slots divided by the peers that hold or wait for one, rounded up) is
//! passed over while a request of another peer waits. Work-conserving: a peer alone may hold
//! every slot; fairness decides only who gets a slot that frees up, and nothing is taken back
//! from a running request.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use libp2p::PeerId;
use tokio::sync::oneshot;

struct Waiter {
    peer: PeerId,
    grant: oneshot::Sender<Slot>,
}

struct State {
    free: usize,
    held: HashMap<PeerId, usize>,
    waiters: VecDeque<Waiter>,
}

/// The slots; clone to share.
#[derive(Clone)]
pub(crate) struct Slots {
    capacity: usize,
    state: Arc<Mutex<State>>,
}

/// A held slot, returned when dropped.
pub(crate) struct Slot {
    slots: Slots,
    peer: PeerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.slots.lock();
        if let Some(n) = state.held.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                state.held.remove(&self.peer);
            }
        }
        state.free += 1;
        self.slots.grant(&mut state);
    }
}

impl Slots {
    pub(crate) fn new(capacity: usize) -> Slots {
        Slots {
            capacity,
            state: Arc::new(Mutex::new(State { free: capacity, held: HashMap::new(), waiters: VecDeque::new() })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Slots held now.
    pub(crate) fn running(&self) -> usize {
        self.capacity - self.lock().free
    }

    /// Slots `peer` holds now.
    #[cfg(test)]
    fn held_by(&self, peer: &PeerId) -> usize {
        self.lock().held.get(peer).copied().unwrap_or(0)
    }

    /// A slot at once when one is free and nobody waits.
    pub(crate) fn try_take(&self, peer: PeerId) -> Option<Slot> {
        let mut state = self.lock();
        if state.free == 0 || !state.waiters.is_empty() {
            return None;
        }
        state.free -= 1;
        *state.held.entry(peer).or_insert(0) += 1;
        Some(Slot { slots: self.clone(), peer })
    }

    /// Joins the waiters; the receiver gets a slot when it is this request's turn. Dropping
    /// the receiver gives up the place (and a slot granted meanwhile goes back).
    pub(crate) fn wait(&self, peer: PeerId) -> oneshot::Receiver<Slot> {
        let (grant, rx) = oneshot::channel();
        let mut state = self.lock();
        state.waiters.push_back(Waiter { peer, grant });
        self.grant(&mut state);
        rx
    }

    /// Hands free slots to waiters: the first whose peer holds less than its fair share,
    /// else the first.
    fn grant(&self, state: &mut State) {
        while state.free > 0 {
            state.waiters.retain(|w| !w.grant.is_closed());
            if state.waiters.is_empty() {
                return;
            }
            let peers: HashSet<&PeerId> = state.held.keys().chain(state.waiters.iter().map(|w| &w.peer)).collect();
            let fair = self.capacity.div_ceil(peers.len().max(1));
            let held = |p: &PeerId| state.held.get(p).copied().unwrap_or(0);
            let pick = state.waiters.iter().position(|w| held(&w.peer) < fair).unwrap_or(0);
            let waiter = state.waiters.remove(pick).expect("a position within the queue");
            state.free -= 1;
            *state.held.entry(waiter.peer).or_insert(0) += 1;
            if let Err(slot) = waiter.grant.send(Slot { slots: self.clone(), peer: waiter.peer }) {
                // The waiter left between the check and the send: undo by hand, since
                // dropping the slot here would take the lock this holds.
                std::mem::forget(slot);
                state.free += 1;
                if let Some(n) = state.held.get_mut(&waiter.peer) {
                    *n -= 1;
                    if *n == 0 {
                        state.held.remove(&waiter.peer);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_goes_to_the_peer_below_its_share_before_earlier_requests_of_a_hog() {
        let slots = Slots::new(2);
        let (hog, other) = (PeerId::random(), PeerId::random());
        let a = slots.try_take(hog).unwrap();
        let _b = slots.try_take(hog).unwrap();
        assert!(slots.try_take(other).is_none(), "all slots held");
        let mut hog_waits = slots.wait(hog);
        let mut other_waits = slots.wait(other);
        drop(a);
        // Two peers, two slots: a share of one each. The hog holds one, so the other's
        // later request goes first.
        let given = other_waits.try_recv().expect("the other peer got the slot");
        assert!(hog_waits.try_recv().is_err(), "the hog's earlier request still waits");
        assert_eq!((slots.held_by(&hog), slots.held_by(&other)), (1, 1));
        drop(given);
        // Alone now, the hog may take every slot.
        let _c = hog_waits.try_recv().expect("work-conserving: the free slot is used");
        assert_eq!((slots.running(), slots.held_by(&hog)), (2, 2));
    }

    #[test]
    fn a_waiter_that_leaves_gives_back_its_place_and_any_slot_granted() {
        let slots = Slots::new(1);
        let (p, q) = (PeerId::random(), PeerId::random());
        let held = slots.try_take(p).unwrap();
        let gone = slots.wait(q);
        let mut next = slots.wait(p);
        drop(gone);
        drop(held);
        let got = next.try_recv().expect("the slot skips the waiter that left");
        assert_eq!(slots.running(), 1);
        drop(got);
        // A slot granted but never received comes back when its receiver goes.
        let held = slots.try_take(p).unwrap();
        let unread = slots.wait(q);
        drop(held);
        assert_eq!(slots.running(), 1, "granted to the waiter");
        drop(unread);
        assert_eq!(slots.running(), 0, "a granted slot nobody received is returned");
    }
}

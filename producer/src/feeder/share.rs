//! Fair share across jobs: free slots of a queue's window go, one at a time, to the job with
//! the least work in flight for its weight (weighted water-filling). A job submitted after a
//! big one therefore gets slots from the next top-up on, instead of after the big one's whole
//! backlog; a job of priority p counts as 2^p jobs. Equal shares tie-break by age.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The weight of a job of priority `p`: 2^p, clamped to 2^±16 (beyond that it is strict).
pub fn weight(priority: i32) -> f64 {
    2f64.powi(priority.clamp(-16, 16))
}

/// A job asking for slots of one queue.
#[derive(Debug, Clone, Copy)]
pub struct Claimant {
    /// Its requests of this queue in the pipeline now.
    pub in_flight: u64,
    pub weight: f64,
    /// Slots it may still take (its cap, its unpublished requests).
    pub room: u64,
}

struct Turn {
    /// (in_flight + given + 1) / weight: its load after one more slot.
    load: f64,
    index: usize,
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Turn {}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Turn {
    /// Reversed: the heap pops the lightest load, then the oldest job.
    fn cmp(&self, other: &Self) -> Ordering {
        other.load.total_cmp(&self.load).then_with(|| other.index.cmp(&self.index))
    }
}

/// Hands out `slots` among `claimants` (oldest first); returns the claimant of each slot in
/// the order they were given, which is also the order their messages should enter the queue.
pub fn allot(slots: u64, claimants: &[Claimant]) -> Vec<usize> {
    let turn = |index: usize, given: u64| {
        let c = &claimants[index];
        Turn { load: (c.in_flight + given + 1) as f64 / c.weight, index }
    };
    let mut heap: BinaryHeap<Turn> =
        claimants.iter().enumerate().filter(|(_, c)| c.room > 0).map(|(i, _)| turn(i, 0)).collect();
    let mut given = vec![0u64; claimants.len()];
    let mut order = Vec::new();
    while (order.len() as u64) < slots {
        let Some(Turn { index, .. }) = heap.pop() else { break };
        given[index] += 1;
        order.push(index);
        if given[index] < claimants[index].room {
            heap.push(turn(index, given[index]));
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(order: &[usize], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        order.iter().for_each(|&i| c[i] += 1);
        c
    }

    fn job(in_flight: u64, priority: i32) -> Claimant {
        Claimant { in_flight, weight: weight(priority), room: u64::MAX }
    }

    #[test]
    fn a_new_job_gets_the_free_slots_until_it_has_caught_up() {
        // A has 1,000 in flight, B just arrived: B takes every freed slot up to A's level.
        let order = allot(100, &[job(1000, 0), job(0, 0)]);
        assert_eq!(counts(&order, 2), [0, 100]);
        let order = allot(300, &[job(900, 0), job(800, 0)]);
        assert_eq!(counts(&order, 2), [100, 200], "then they share equally");
    }

    #[test]
    fn equal_jobs_share_equally_and_interleave() {
        let order = allot(6, &[job(0, 0), job(0, 0), job(0, 0)]);
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn priority_p_weighs_as_two_to_the_p() {
        let order = allot(900, &[job(0, 0), job(0, 3)]);
        assert_eq!(counts(&order, 2), [100, 800]);
        let order = allot(300, &[job(0, -1), job(0, 0)]);
        assert_eq!(counts(&order, 2), [100, 200]);
    }

    #[test]
    fn room_caps_a_job_and_the_rest_goes_to_others() {
        let capped = Claimant { room: 5, ..job(0, 0) };
        let order = allot(50, &[capped, job(0, 0)]);
        assert_eq!(counts(&order, 2), [5, 45]);
        let none = Claimant { room: 0, ..job(0, 0) };
        assert_eq!(allot(10, &[none]), Vec::<usize>::new(), "no room, no slots");
    }
}

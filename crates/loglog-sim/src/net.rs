//! The modelled network and the event queue that drives the simulation.
//!
//! Messages between endpoints (nodes, and clients) are lost, delayed,
//! reordered (independent random delays, with occasional long spikes) and
//! duplicated according to [`NetConfig`]. Partitions block directed pairs:
//! a symmetric partition blocks both directions, a one-way partition one.
//! A message is dropped if its link is blocked when it is sent or when it
//! would arrive, so healing never resurrects messages sent into a wall.
//!
//! The [`EventQueue`] orders events by (time, sequence number): two events
//! at the same instant run in the order they were scheduled, so a run is a
//! pure function of its seed.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use rand::Rng;

/// Simulated time in nanoseconds.
pub type Nanos = u64;

pub const MICROS: Nanos = 1_000;
pub const MILLIS: Nanos = 1_000_000;
pub const SECONDS: Nanos = 1_000_000_000;

/// How unreliable the network is right now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NetConfig {
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Usual one-way delay range.
    pub min_delay: Nanos,
    pub max_delay: Nanos,
    /// Probability of a delay spike (up to `spike_delay`), which reorders
    /// the message behind later ones.
    pub spike: f64,
    pub spike_delay: Nanos,
}

impl NetConfig {
    /// A healthy LAN: no loss, small delays, rare mild spikes.
    pub fn healthy() -> NetConfig {
        NetConfig {
            loss: 0.0,
            duplicate: 0.0,
            min_delay: 100 * MICROS,
            max_delay: 500 * MICROS,
            spike: 0.0,
            spike_delay: 0,
        }
    }
}

/// Which directed links are up, and how messages fare on them.
#[derive(Clone, Debug)]
pub struct Network {
    endpoints: usize,
    /// `blocked[from * endpoints + to]`.
    blocked: Vec<bool>,
    pub config: NetConfig,
}

impl Network {
    pub fn new(endpoints: usize, config: NetConfig) -> Network {
        Network {
            endpoints,
            blocked: vec![false; endpoints * endpoints],
            config,
        }
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// Whether a message from `from` to `to` can pass now.
    pub fn is_open(&self, from: usize, to: usize) -> bool {
        !self.blocked[from * self.endpoints + to]
    }

    /// Blocks messages from `from` to `to` (one way).
    pub fn block(&mut self, from: usize, to: usize) {
        if from != to {
            self.blocked[from * self.endpoints + to] = true;
        }
    }

    /// Cuts every link between `side` and the other endpoints among
    /// `among`, both ways.
    pub fn partition(&mut self, side: &[usize], among: &[usize]) {
        for &inside in side {
            for &other in among {
                if !side.contains(&other) {
                    self.block(inside, other);
                    self.block(other, inside);
                }
            }
        }
    }

    /// Opens every link.
    pub fn heal(&mut self) {
        self.blocked.fill(false);
    }

    /// Whether any link is blocked.
    pub fn is_partitioned(&self) -> bool {
        self.blocked.iter().any(|&b| b)
    }

    /// The delays after which copies of one message arrive: none when it is
    /// lost (or the link is blocked), two when it is duplicated.
    pub fn deliveries(&self, from: usize, to: usize, rng: &mut impl Rng) -> Deliveries {
        let mut deliveries = Deliveries::default();
        if !self.is_open(from, to) {
            return deliveries;
        }
        let config = &self.config;
        if config.loss > 0.0 && rng.gen_bool(config.loss) {
            return deliveries;
        }
        let copies = if config.duplicate > 0.0 && rng.gen_bool(config.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = rng.gen_range(config.min_delay..=config.max_delay);
            if config.spike > 0.0 && rng.gen_bool(config.spike) {
                delay += rng.gen_range(0..=config.spike_delay);
            }
            deliveries.push(delay);
        }
        deliveries
    }
}

/// Up to two delivery delays (a message and its duplicate), without
/// allocating.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Deliveries {
    delays: [Nanos; 2],
    len: usize,
}

impl Deliveries {
    fn push(&mut self, delay: Nanos) {
        self.delays[self.len] = delay;
        self.len += 1;
    }

    pub fn as_slice(&self) -> &[Nanos] {
        &self.delays[..self.len]
    }
}

struct Scheduled<E> {
    at: Nanos,
    sequence: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.sequence) == (other.at, other.sequence)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest event runs first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.sequence).cmp(&(self.at, self.sequence))
    }
}

/// Pending events ordered by (time, sequence).
pub struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    next_sequence: u64,
    now: Nanos,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        EventQueue {
            heap: BinaryHeap::new(),
            next_sequence: 0,
            now: 0,
        }
    }
}

impl<E> EventQueue<E> {
    pub fn new() -> EventQueue<E> {
        EventQueue::default()
    }

    /// The time of the event last popped.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// Schedules `event` at `at` (never in the past).
    pub fn schedule(&mut self, at: Nanos, event: E) {
        let at = at.max(self.now);
        self.heap.push(Scheduled {
            at,
            sequence: self.next_sequence,
            event,
        });
        self.next_sequence += 1;
    }

    /// Schedules `event` after `delay`.
    pub fn schedule_in(&mut self, delay: Nanos, event: E) {
        self.schedule(self.now + delay, event);
    }

    /// Pops the earliest event and advances the clock to it.
    pub fn pop(&mut self) -> Option<(Nanos, E)> {
        let scheduled = self.heap.pop()?;
        debug_assert!(scheduled.at >= self.now, "time never goes back");
        self.now = scheduled.at;
        Some((scheduled.at, scheduled.event))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn events_run_in_time_then_schedule_order() {
        let mut queue = EventQueue::new();
        queue.schedule(5, "b");
        queue.schedule(3, "a");
        queue.schedule(5, "c");
        queue.schedule(9, "d");
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(order, vec![(3, "a"), (5, "b"), (5, "c"), (9, "d")]);
        // Scheduling in the past runs now, not before.
        queue.schedule(1, "late");
        assert_eq!(queue.pop(), Some((9, "late")));
    }

    #[test]
    fn partitions_block_and_heal() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut net = Network::new(4, NetConfig::healthy());
        net.partition(&[0], &[0, 1, 2]);
        assert!(!net.is_open(0, 1) && !net.is_open(2, 0));
        assert!(net.is_open(1, 2) && net.is_open(0, 3) && net.is_open(3, 0));
        assert!(net.deliveries(0, 1, &mut rng).as_slice().is_empty());
        net.heal();
        assert!(!net.is_partitioned());
        net.block(1, 2);
        assert!(!net.is_open(1, 2) && net.is_open(2, 1));
        assert_eq!(net.deliveries(2, 1, &mut rng).as_slice().len(), 1);
    }

    #[test]
    fn loss_duplication_and_spikes_happen_at_their_rates() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let config = NetConfig {
            loss: 0.2,
            duplicate: 0.1,
            min_delay: 10,
            max_delay: 20,
            spike: 0.1,
            spike_delay: 1000,
        };
        let net = Network::new(2, config);
        let (mut lost, mut doubled, mut spiked) = (0, 0, 0);
        for _ in 0..10_000 {
            let deliveries = net.deliveries(0, 1, &mut rng);
            match deliveries.as_slice().len() {
                0 => lost += 1,
                2 => doubled += 1,
                _ => {}
            }
            spiked += deliveries.as_slice().iter().filter(|&&d| d > 20).count();
        }
        assert!((1700..2300).contains(&lost), "{lost}");
        assert!((600..1000).contains(&doubled), "{doubled}");
        assert!(spiked > 500, "{spiked}");
    }

    #[test]
    fn the_same_seed_gives_the_same_deliveries() {
        let config = NetConfig {
            loss: 0.3,
            duplicate: 0.3,
            min_delay: 1,
            max_delay: 1000,
            spike: 0.2,
            spike_delay: 10_000,
        };
        let net = Network::new(3, config);
        let run = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..100)
                .map(|i| net.deliveries(i % 3, (i + 1) % 3, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }
}

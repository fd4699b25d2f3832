//! `lamport`: a leaderless total order from Lamport clocks over the
//! replica's reliable FIFO links. An ordering strategy defined outside the
//! `orderings` crate and registered through `inventory`: the extension point
//! that `examples/lamport_server.rs` and `docs/writing-a-strategy.md` show.
//!
//! # Protocol
//!
//! Every server keeps a Lamport clock and stamps everything it sends with
//! `(clock, server)` after incrementing it, so the stamps one server sends
//! grow strictly; on receipt it sets its clock to at least the stamp it got.
//!
//! - A post is stamped and multicast (`MSG`); every server, the origin
//!   included, puts it in one holdback queue ordered by stamp.
//! - A server that receives a `MSG` it has not yet covered multicasts an
//!   `ACK` carrying only a stamp: "everything I send from now on is later
//!   than this message". If something it already multicast (its own `MSG` or
//!   an earlier `ACK`) has a later stamp, it stays silent; acknowledgements
//!   made in one step ride in the same datagram as everything else.
//! - Since each link is FIFO and each peer's stamps grow, once a server has
//!   received from every peer something stamped at least `s`, no message
//!   stamped below `s` can still arrive. So it delivers, in stamp order, every
//!   queued message up to the smallest "latest stamp" over its peers.
//!
//! That costs two one-way delays (message, acknowledgements), against three
//! for ISIS/Skeen agreement (`isis`). The built-in `total` is this protocol
//! grown up: coalesced acknowledgements, the flush of departed servers,
//! rejoins, and a reordering network without links. The order is one global order, so it
//! is one identical order per room; a client's messages go through one
//! server, whose stamps grow, so it keeps each sender's FIFO order; and a
//! server's clock passes every message it delivered before a client of it
//! posts, so it is causal too.
//!
//! # What it relies on
//!
//! Per-peer FIFO, exactly-once links: the [`orderings::Replica`]
//! provides them. It does **not** work over a reordering network without the
//! links (the simulator's `Network::Raw`): a stamp arriving below one already
//! received from the same peer is rejected as a protocol error.
//! Like every agreement without a failure detector, it makes progress only
//! while every server is up: one server down stalls delivery (not posting)
//! until it is back.
//!
//! # Restarts
//!
//! A restarted server begins with its clock at zero. To keep its new
//! messages from being ordered before messages some server already
//! delivered, it stamps no post until it has heard from every peer: a peer
//! sends `HELLO` (a stamp) whenever it meets a new incarnation, and
//! everything it has delivered is stamped below that. Posts made meanwhile
//! wait, in order. A server that sees a peer restart forgets that peer's
//! latest stamp (it delivers nothing more until the new incarnation speaks),
//! and answers the new incarnation's `HELLO` like a `MSG`, so the newcomer
//! announces a clock above everything it may have missed.
//!
//! Messages of the crashed incarnation that reached only some servers are
//! delivered by those (in the same relative order) and never by the others;
//! only the crashed server's own clients, who are gone, sent them. Messages
//! that survivors sent to the crashed incarnation and that it never
//! acknowledged are not re-sent to the new one, which had no clients yet.

use bytes::Bytes;
use orderings::{
    Dest, Guarantees, MsgId, Ordering, Outbox, Post, Reader, RoomId, ServerId, StrategyContext,
    StrategySpec, StrategyStats, Time, WireError, Writer,
};
use std::collections::{BTreeMap, VecDeque};

/// The name given to `chatserver -o`.
pub const NAME: &str = "lamport";

/// Payload kinds (first byte). Each server runs one strategy, so these only
/// need to be distinct among this strategy's own packets.
mod kind {
    /// `MSG clock counter room line`
    pub const MSG: u8 = 0x41;
    /// `ACK clock`: never answered.
    pub const ACK: u8 = 0x42;
    /// `HELLO clock`: to a newly met incarnation; answered like a `MSG`.
    pub const HELLO: u8 = 0x43;
}

/// Stamps above this are refused (a peer would need 2^62 messages).
const MAX_CLOCK: u64 = 1 << 62;

/// A position in the order: `(clock, server index)`; unique, since one
/// server never uses a clock value twice.
type Stamp = (u64, u16);

#[derive(Debug)]
struct Held {
    id: MsgId,
    room: RoomId,
    line: Bytes,
}

/// The strategy's state (see the module docs).
#[derive(Debug)]
pub struct Lamport {
    me: ServerId,
    clock: u64,
    /// Per server: the clock of the latest stamp received from its current
    /// incarnation (`None`: nothing yet). Unused at our own index.
    latest: Vec<Option<u64>>,
    /// Messages not yet delivered, in the order they will be.
    queue: BTreeMap<Stamp, Held>,
    /// The clock of the latest stamp we multicast to every peer (0: none).
    announced: u64,
    /// Heard from every peer since we started: our stamps now exceed
    /// everything any peer delivered before it met us.
    ready: bool,
    /// Posts made before `ready`, in order.
    waiting: VecDeque<Post>,
    /// Our own messages in `queue`.
    own_queued: usize,
    /// Acknowledgements multicast (for tests and `-v`).
    pub acks_sent: u64,
}

impl Lamport {
    pub fn new(ctx: &StrategyContext) -> Self {
        Lamport {
            me: ctx.me,
            clock: 0,
            latest: vec![None; ctx.servers],
            queue: BTreeMap::new(),
            announced: 0,
            ready: ctx.servers <= 1,
            waiting: VecDeque::new(),
            own_queued: 0,
            acks_sent: 0,
        }
    }

    fn peers(&self) -> impl Iterator<Item = usize> + '_ {
        let me = self.me.index();
        (0..self.latest.len()).filter(move |&i| i != me)
    }

    /// The next stamp's clock: strictly above everything sent or received.
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn stamped(&mut self, kind: u8) -> (u64, Writer) {
        let c = self.tick();
        let mut w = Writer::with_capacity(16);
        w.u8(kind).varint(c);
        (c, w)
    }

    /// Records a stamp from `from`, which must grow along the link.
    fn observe(&mut self, from: ServerId, clock: u64) -> Result<(), WireError> {
        let slot = self
            .latest
            .get_mut(from.index())
            .filter(|_| from != self.me)
            .ok_or(WireError::OutOfRange("server"))?;
        if clock > MAX_CLOCK {
            // No honest cluster gets near; keeps `tick` from overflowing.
            return Err(WireError::OutOfRange("lamport clock"));
        }
        if slot.is_some_and(|prev| clock <= prev) {
            // Impossible over the replica's FIFO links; refuse rather than
            // deliver out of order.
            return Err(WireError::OutOfRange("lamport stamp did not grow"));
        }
        *slot = Some(clock);
        self.clock = self.clock.max(clock);
        Ok(())
    }

    /// Stamps and multicasts a post, and queues it here.
    fn multicast(&mut self, post: Post, out: &mut Outbox) {
        let c = self.tick();
        let mut w = Writer::with_capacity(post.line.len() + 24);
        w.u8(kind::MSG)
            .varint(c)
            .varint(post.id.counter)
            .varint(u64::from(post.room))
            .bytes(&post.line);
        out.send(Dest::AllPeers, w.into_bytes());
        self.announced = c;
        self.own_queued += 1;
        self.queue.insert(
            (c, self.me.0),
            Held {
                id: post.id,
                room: post.room,
                line: post.line,
            },
        );
    }

    /// Makes every peer learn a stamp of ours later than `(clock, from)`,
    /// unless one we already multicast is.
    fn cover(&mut self, clock: u64, from: ServerId, out: &mut Outbox) {
        if (self.announced, self.me.0) > (clock, from.0) {
            return;
        }
        let (c, w) = self.stamped(kind::ACK);
        out.send(Dest::AllPeers, w.into_bytes());
        self.announced = c;
        self.acks_sent += 1;
    }

    /// Once every peer has been heard from, stamps the posts that waited.
    fn check_ready(&mut self, out: &mut Outbox) {
        if self.ready || self.peers().any(|i| self.latest[i].is_none()) {
            return;
        }
        self.ready = true;
        while let Some(post) = self.waiting.pop_front() {
            self.multicast(post, out);
        }
    }

    /// Delivers every queued message no peer can still precede.
    fn deliver(&mut self, out: &mut Outbox) {
        let mut frontier: Stamp = (u64::MAX, u16::MAX);
        for i in self.peers() {
            match self.latest[i] {
                Some(c) => frontier = frontier.min((c, i as u16)),
                None => return,
            }
        }
        while let Some(entry) = self.queue.first_entry() {
            if *entry.key() > frontier {
                break;
            }
            let held = entry.remove();
            if held.id.origin == self.me {
                self.own_queued -= 1;
            }
            out.deliver(Post {
                id: held.id,
                room: held.room,
                line: held.line,
            });
        }
    }
}

impl Ordering for Lamport {
    fn handle_post(&mut self, _now: Time, post: Post, out: &mut Outbox) {
        if self.ready {
            self.multicast(post, out);
            self.deliver(out); // a lone server delivers at once
        } else {
            self.waiting.push_back(post);
        }
    }

    fn handle_peer(
        &mut self,
        _now: Time,
        from: ServerId,
        payload: &[u8],
        out: &mut Outbox,
    ) -> Result<(), WireError> {
        let mut r = Reader::new(payload);
        let k = r.u8()?;
        let clock = r.varint()?;
        let msg = match k {
            kind::MSG => {
                let counter = r.varint()?;
                let room = r.varint_u32("room")?;
                let line = Bytes::copy_from_slice(r.bytes()?);
                Some(Held {
                    id: MsgId {
                        origin: from,
                        counter,
                    },
                    room,
                    line,
                })
            }
            kind::ACK | kind::HELLO => None,
            k => return Err(WireError::UnknownKind(k)),
        };
        r.finish()?;
        self.observe(from, clock)?;
        if let Some(held) = msg {
            self.queue.insert((clock, from.0), held);
        }
        // Posts that waited go first: their stamps cover this payload too.
        self.check_ready(out);
        if k != kind::ACK {
            self.cover(clock, from, out);
        }
        self.deliver(out);
        Ok(())
    }

    fn handle_peer_incarnation(
        &mut self,
        _now: Time,
        peer: ServerId,
        _incarnation: u64,
        restarted: bool,
        out: &mut Outbox,
    ) {
        if peer == self.me || peer.index() >= self.latest.len() {
            return;
        }
        if restarted {
            // The new incarnation's clock starts again: wait for its stamps.
            self.latest[peer.index()] = None;
        }
        // Lets a (re)started peer stamp above all we delivered (see the
        // module docs). Sent to it alone, so `announced` is unchanged.
        let (_, w) = self.stamped(kind::HELLO);
        out.send(Dest::Peer(peer), w.into_bytes());
    }

    fn stats(&self) -> StrategyStats {
        StrategyStats {
            refused: 0,
            held_back: self.queue.len() - self.own_queued,
            in_flight: self.own_queued + self.waiting.len(),
            relayed: 0,
        }
    }
}

fn build(ctx: &StrategyContext) -> Box<dyn Ordering> {
    Box::new(Lamport::new(ctx))
}

inventory::submit! {
    StrategySpec {
        name: NAME,
        summary: "one identical order per room from Lamport clocks and acknowledgements (2 one-way delays; needs the FIFO links; example plugin)",
        guarantees: Guarantees { fifo: true, total: true, causal: true },
        build,
    }
}

/// The link guard. A strategy in a *separate crate* that the binary never
/// names is not linked at all, so its `inventory::submit!` never runs and
/// `-o lamport` is silently unknown. Calling this once from `main` makes the
/// binary reference the crate (rustc links every crate a binary uses, with
/// all of its registrations). Inside the binary's own crate, as here, it is a
/// no-op kept to show the pattern. Returns the name to check for.
#[inline(never)]
pub fn link() -> &'static str {
    NAME
}

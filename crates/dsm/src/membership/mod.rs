//! Cluster membership: the boot-up protocol at rank 0 and ring monitoring.
//!
//! Boot-up: rank 0 is the coordinator and listens on `DSM_COORDINATOR`. Every other node binds
//! its own listener, connects to the coordinator (retrying until the join deadline: nodes may
//! start in any order), proves the cluster key in the transport's challenge–response handshake
//! ([`key`] says where the key comes from) and sends `Join { rank, size, endpoint }`, tagged
//! like every later frame. The coordinator handles each connection on its own thread with its
//! own deadline; one that fails the handshake gets nothing and is reported. When every rank has joined,
//! the coordinator sends each one the `NodeList`; the nodes then build the transport mesh and
//! each sends `Joined` to every other. `Node::join` returns once a node has seen every
//! `Joined`, so all nodes agree on the node set and ranks. If ranks are still missing at the
//! deadline, the coordinator sends each joiner a `NodeFailed { rank }` per missing rank before
//! closing, and every node fails with `JoinTimeout { missing }`.
//!
//! Monitoring: each node heartbeats its ring successor and watches its predecessor
//! ([`ring::Ring`]). A predecessor silent past the failure timeout is declared failed and every
//! node is told; the ring closes around it.
//!
//! The protocol parts ([`roster`], [`ring`]) do no I/O; [`bootstrap`] drives the boot-up over
//! plain std TCP, before the transport exists.

pub(crate) mod bootstrap;
pub(crate) mod endpoint;
pub(crate) mod framed;
pub(crate) mod key;
pub(crate) mod ring;
pub(crate) mod roster;

//! Simulation of the lock and barrier engine (dsm-locks) over [`crate::net::SimNet`].
//! Owned by the locks work; empty until it lands.

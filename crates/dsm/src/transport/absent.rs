//! Stand-ins for dsm-rdma's types when the `rdma` feature is off, so that the runtime has one
//! code path: the connector never opens (there is no value of these types), so a node offers
//! only TCP, and `DSM_TRANSPORT=rdma!` fails `join` saying the feature is missing.

use std::fmt;
use std::sync::Arc;

use dsm_core::{EventSink, HomeMemory, Transport, TransportError};
use dsm_wire::{Message, NodeId, Page, PageId, RdmaConnInfo};

/// Why RDMA cannot be used in this build.
#[derive(Debug)]
pub(crate) struct Absent;

impl fmt::Display for Absent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dsm was built without its `rdma` feature (default-features = false)")
    }
}

/// No device settings to read.
#[derive(Debug)]
pub(crate) struct RdmaConfig;

impl RdmaConfig {
    pub(crate) fn from_env(_cluster: u64) -> Self {
        RdmaConfig
    }
}

/// Never exists: [`RdmaConnector::open`] always fails.
#[derive(Debug)]
pub(crate) enum RdmaConnector {}

impl RdmaConnector {
    pub(crate) fn open(_local: NodeId, _size: u32, _config: RdmaConfig) -> Result<Self, Absent> {
        Err(Absent)
    }
    pub(crate) fn conn_info(&self, _peer: NodeId) -> Result<RdmaConnInfo, Absent> {
        match *self {}
    }
    pub(crate) fn connect(&mut self, _peer: NodeId, _remote: &RdmaConnInfo) -> Result<(), Absent> {
        match *self {}
    }
    pub(crate) fn device(&self) -> &str {
        match *self {}
    }
    pub(crate) fn start(self, _sink: Arc<dyn EventSink>) -> Result<RdmaTransport, Absent> {
        match self {}
    }
}

/// Never exists: no connector starts one.
#[derive(Debug)]
pub(crate) enum RdmaTransport {}

impl RdmaTransport {
    pub(crate) fn has_remote_region(&self, _peer: NodeId, _region: u32) -> bool {
        match *self {}
    }
    pub(crate) fn close(&self) {
        match *self {}
    }
}

impl Transport for RdmaTransport {
    fn local(&self) -> NodeId {
        match *self {}
    }
    fn send(&self, _to: NodeId, _message: &Message) -> Result<(), TransportError> {
        match *self {}
    }
    fn expose(&self, _region: u32, _memory: HomeMemory) -> Result<(), TransportError> {
        match *self {}
    }
    fn withdraw(&self, _region: u32) -> Result<(), TransportError> {
        match *self {}
    }
    fn read_page(&self, _home: NodeId, _page: PageId, _token: u64) -> Result<(), TransportError> {
        match *self {}
    }
    fn write_page(
        &self,
        _home: NodeId,
        _page: PageId,
        _data: Page,
        _token: u64,
    ) -> Result<(), TransportError> {
        match *self {}
    }
    fn one_sided(&self) -> bool {
        match *self {}
    }
}

//! Device list and device context (`ibv_get_device_list`, `ibv_open_device`, port and GID
//! queries).

use std::ffi::CStr;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use crate::{Error, Result};

/// Names of the RDMA devices on this machine. [`Error::NoDevice`] when there are none.
pub fn device_names() -> Result<Vec<String>> {
    let list = DeviceList::get()?;
    Ok(list.devices().iter().map(|&d| device_name(d)).collect())
}

/// The array `ibv_get_device_list` returns; freed on drop.
struct DeviceList {
    list: NonNull<*mut ffi::ibv_device>,
    len: usize,
}

impl DeviceList {
    fn get() -> Result<Self> {
        let mut len: i32 = 0;
        // SAFETY: `len` is a valid out-pointer; the list is freed by `Drop`.
        let list = unsafe { ffi::ibv_get_device_list(&mut len) };
        let Some(list) = NonNull::new(list) else {
            return Err(Error::NoDevice {
                detail: format!("ibv_get_device_list: {}", std::io::Error::last_os_error()),
            });
        };
        let list = DeviceList {
            list,
            len: usize::try_from(len).unwrap_or(0),
        };
        if list.len == 0 {
            return Err(Error::NoDevice {
                detail: "ibv_get_device_list found no device".into(),
            });
        }
        Ok(list)
    }

    fn devices(&self) -> &[*mut ffi::ibv_device] {
        // SAFETY: `ibv_get_device_list` returned `len` valid entries, alive until the free.
        unsafe { std::slice::from_raw_parts(self.list.as_ptr(), self.len) }
    }
}

impl Drop for DeviceList {
    fn drop(&mut self) {
        // SAFETY: the list came from `ibv_get_device_list` and is freed once.
        unsafe { ffi::ibv_free_device_list(self.list.as_ptr()) };
    }
}

fn device_name(device: *mut ffi::ibv_device) -> String {
    // SAFETY: `device` is an entry of a live device list; the name is a C string it owns.
    let name = unsafe { CStr::from_ptr(ffi::ibv_get_device_name(device)) };
    name.to_string_lossy().into_owned()
}

/// An open device (`ibv_context`), closed when the last object made from it is gone.
#[derive(Clone)]
pub struct Context {
    pub(crate) inner: Arc<ContextInner>,
}

pub(crate) struct ContextInner {
    pub(crate) raw: NonNull<ffi::ibv_context>,
    pub(crate) name: String,
}

// SAFETY: libibverbs contexts may be used from any thread (the verbs are thread-safe).
unsafe impl Send for ContextInner {}
// SAFETY: as above.
unsafe impl Sync for ContextInner {}

impl Drop for ContextInner {
    fn drop(&mut self) {
        // SAFETY: opened by `ibv_open_device`; every child holds an `Arc` to us, so none is left.
        unsafe { ffi::ibv_close_device(self.raw.as_ptr()) };
    }
}

/// What the transport needs to know about a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortInfo {
    /// `PORT_ACTIVE`.
    pub active: bool,
    /// Active MTU as the `ibv_mtu` code (1 = 256 ... 5 = 4096).
    pub mtu: u32,
    /// LID (0 on RoCE).
    pub lid: u16,
    /// Entries in the GID table.
    pub gid_table_len: u32,
}

impl Context {
    /// Opens the device called `name`, or the first one.
    pub fn open(name: Option<&str>) -> Result<Self> {
        let list = DeviceList::get()?;
        let device = match name {
            None => list.devices()[0],
            Some(name) => *list
                .devices()
                .iter()
                .find(|&&d| device_name(d) == name)
                .ok_or_else(|| Error::NoDevice {
                    detail: format!("no device named {name}"),
                })?,
        };
        let name = device_name(device);
        // SAFETY: `device` is an entry of the live list; the context outlives the list.
        let raw = unsafe { ffi::ibv_open_device(device) };
        let raw = NonNull::new(raw).ok_or_else(|| Error::verb("ibv_open_device", 0))?;
        Ok(Context {
            inner: Arc::new(ContextInner { raw, name }),
        })
    }

    /// The device's name (`rxe0`).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Queries `port` (`ibv_query_port`).
    pub fn query_port(&self, port: u8) -> Result<PortInfo> {
        // SAFETY: all-zero is a valid `ibv_port_attr` (plain integers).
        let mut attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
        // SAFETY: the context is open and `attr` is a valid out-pointer of the right size.
        let rc = unsafe { ffi::___ibv_query_port(self.inner.raw.as_ptr(), port, &mut attr) };
        if rc != 0 {
            return Err(Error::verb("ibv_query_port", rc));
        }
        Ok(PortInfo {
            active: attr.state == ffi::ibv_port_state::IBV_PORT_ACTIVE,
            mtu: attr.active_mtu,
            lid: attr.lid,
            gid_table_len: u32::try_from(attr.gid_tbl_len).unwrap_or(0),
        })
    }

    /// Entry `index` of `port`'s GID table (`ibv_query_gid`).
    pub fn query_gid(&self, port: u8, index: u8) -> Result<[u8; 16]> {
        let mut gid = ffi::ibv_gid { raw: [0; 16] };
        // SAFETY: the context is open and `gid` is a valid out-pointer.
        let rc = unsafe {
            ffi::ibv_query_gid(self.inner.raw.as_ptr(), port, i32::from(index), &mut gid)
        };
        if rc != 0 {
            return Err(Error::verb("ibv_query_gid", rc));
        }
        // SAFETY: every bit pattern of the union is a valid byte array.
        Ok(unsafe { gid.raw })
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("name", &self.inner.name)
            .finish()
    }
}

//! The cluster key: where it comes from, the per-user key file, and what is derived from it.
//!
//! A node of a multi-node cluster never runs keyless by default. In order:
//! 1. `DSM_CLUSTER_KEY` (or [`ConfigBuilder::cluster_key`](crate::ConfigBuilder::cluster_key)):
//!    64 hex digits are the key itself, anything else a passphrase the key is derived from
//!    (BLAKE3 `derive_key`, context `dsm_tcp_fallback::PASSPHRASE_CONTEXT`). `dsm-run` sets a
//!    fresh random one for every run.
//! 2. Otherwise (`mpirun`, `srun`) the per-user key file `$XDG_CONFIG_HOME/dsm/cluster.key`
//!    (else `~/.config/dsm/cluster.key`): 64 random hex digits, created mode 0600 on first
//!    use, atomically (written under a temporary name, then hard-linked into place, so nodes
//!    starting at once on a shared home all read the same whole key). A file readable or
//!    writable by anyone but its owner, or owned by another user, is refused.
//! 3. `DSM_INSECURE=1` (or [`ConfigBuilder::insecure`](crate::ConfigBuilder::insecure)) runs
//!    without a key, and `Node::join` says so on stderr.
//!
//! The cluster id every frame header carries is derived from the coordinator address and the
//! key with BLAKE3 `derive_key` ([`CLUSTER_ID_CONTEXT`]).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// BLAKE3 `derive_key` context of the cluster id.
pub(crate) const CLUSTER_ID_CONTEXT: &str = "dsm 2025 cluster id v1";
/// Name of the key file inside the `dsm` configuration directory.
pub(crate) const KEY_FILE_NAME: &str = "cluster.key";
/// Longest key file read (a key is 64 hex digits; a passphrase written by hand may be longer).
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The cluster secret as configured (a passphrase or 64 hex digits). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The 32-byte cluster key: the hex digits themselves, or derived from the passphrase.
    pub(crate) fn key(&self) -> [u8; 32] {
        match std::str::from_utf8(&self.0) {
            Ok(text) => dsm_tcp_fallback::cluster_key_from_str(text),
            Err(_) => blake3::derive_key(dsm_tcp_fallback::PASSPHRASE_CONTEXT, &self.0),
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The cluster id of a cluster coordinated at `coordinator` with `key` (`None`: keyless).
pub(crate) fn cluster_id(coordinator: &str, key: Option<&[u8; 32]>) -> u64 {
    let mut material = Vec::with_capacity(coordinator.len() + 1 + 32);
    material.extend_from_slice(coordinator.as_bytes());
    material.push(0);
    if let Some(key) = key {
        material.extend_from_slice(key);
    }
    let derived = blake3::derive_key(CLUSTER_ID_CONTEXT, &material);
    u64::from_le_bytes(derived[..8].try_into().expect("8 bytes"))
}

/// The per-user key file's path from the environment `lookup` gives: under
/// `$XDG_CONFIG_HOME` when it is an absolute path, else under `$HOME/.config`.
pub(crate) fn default_key_file(lookup: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let config_home = lookup("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            lookup("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| Path::new(&h).join(".config"))
        })?;
    Some(config_home.join("dsm").join(KEY_FILE_NAME))
}

/// Reads the key file at `path`, creating it with a fresh random key first if it is absent.
pub(crate) fn load_or_create(path: &Path) -> Result<Secret> {
    match read(path) {
        Err(Error::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
            create(path)?;
            read(path)
        }
        other => other,
    }
}

/// Reads a key file, refusing one that others could read or write.
fn read(path: &Path) -> Result<Secret> {
    let shown = path.display();
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("open the cluster key file {shown}"), e))?;
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("stat the cluster key file {shown}"), e))?;
    check_private(path, meta.mode(), meta.uid(), meta.is_file())?;
    let mut text = String::new();
    file.take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(|e| Error::io(format!("read the cluster key file {shown}"), e))?;
    let key = text.trim();
    if key.is_empty() {
        return Err(Error::Config(format!(
            "the cluster key file {shown} is empty: remove it to have a new key made"
        )));
    }
    Ok(Secret::new(key.as_bytes().to_vec()))
}

fn check_private(path: &Path, mode: u32, uid: u32, regular: bool) -> Result<()> {
    let shown = path.display();
    if !regular {
        return Err(Error::Config(format!(
            "the cluster key file {shown} is not a regular file"
        )));
    }
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid != me {
        return Err(Error::Config(format!(
            "the cluster key file {shown} belongs to user {uid}, not to this user ({me}): \
             refused"
        )));
    }
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "the cluster key file {shown} has mode {:03o}: other users may read or change the \
             key; refused (chmod 600 it, or remove it to have a new one made)",
            mode & 0o777
        )));
    }
    Ok(())
}

/// Creates the key file: directory mode 0700, file mode 0600, written whole under a temporary
/// name and hard-linked into place (losing the race to another node is fine: its key stays).
fn create(path: &Path) -> Result<()> {
    let shown = path.display();
    let dir = path
        .parent()
        .ok_or_else(|| Error::Config(format!("the key file path {shown} has no directory")))?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("create the directory of {shown}"), e))?;
    let temporary = dir.join(format!(
        ".{KEY_FILE_NAME}.{}.{:016x}",
        std::process::id(),
        random_u64()?
    ));
    let written = write_new(&temporary, &random_hex_key()?);
    let linked = written.and_then(|()| {
        std::fs::hard_link(&temporary, path).or_else(|e| match e.kind() {
            ErrorKind::AlreadyExists => Ok(()),
            _ => Err(Error::io(format!("create the cluster key file {shown}"), e)),
        })
    });
    let _ = std::fs::remove_file(&temporary);
    linked?;
    tracing::info!(path = %shown, "created the per-user cluster key file");
    Ok(())
}

fn write_new(path: &Path, text: &str) -> Result<()> {
    let shown = path.display();
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io(format!("create {shown}"), e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| Error::io(format!("write {shown}"), e))
}

/// 64 random hex digits and a newline.
pub(crate) fn random_hex_key() -> Result<String> {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| Error::io("getrandom", std::io::Error::other(e.to_string())))?;
    let mut text: String = key.iter().map(|b| format!("{b:02x}")).collect();
    text.push('\n');
    Ok(text)
}

fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::io("getrandom", std::io::Error::other(e.to_string())))?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "dsm-key-{name}-{}-{:x}",
            std::process::id(),
            random_u64().unwrap()
        ));
        dir.join("dsm").join(KEY_FILE_NAME)
    }

    #[test]
    fn the_key_file_is_made_private_once_and_read_back() {
        let path = scratch("create");
        let first = load_or_create(&path).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let dir = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
        assert_eq!(first.bytes().len(), 64);
        assert!(first.bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(
            load_or_create(&path).unwrap(),
            first,
            "a second use made a new key"
        );
        std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn nodes_creating_the_file_at_once_share_one_key() {
        let path = scratch("race");
        let keys: Vec<Secret> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| load_or_create(&path))).collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().unwrap())
                .collect()
        });
        assert!(keys.iter().all(|k| *k == keys[0]));
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left behind: {left:?}");
        std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        let path = scratch("open");
        load_or_create(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(&path).unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("mode 644")),
            "{err}"
        );
        std::fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
    }

    #[test]
    fn the_key_file_lives_under_xdg_config_home_else_home() {
        let env = |xdg: Option<&str>, home: Option<&str>| {
            let (xdg, home) = (xdg.map(str::to_owned), home.map(str::to_owned));
            default_key_file(move |n| match n {
                "XDG_CONFIG_HOME" => xdg.clone(),
                "HOME" => home.clone(),
                _ => None,
            })
        };
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(env(Some("/x"), Some("/h")), p("/x/dsm/cluster.key"));
        assert_eq!(
            env(Some("rel"), Some("/h")),
            p("/h/.config/dsm/cluster.key")
        );
        assert_eq!(env(None, None), None);
    }

    #[test]
    fn cluster_ids_depend_on_coordinator_and_key() {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_eq!(cluster_id("h:1", Some(&a)), cluster_id("h:1", Some(&a)));
        assert_ne!(cluster_id("h:1", Some(&a)), cluster_id("h:1", Some(&b)));
        assert_ne!(cluster_id("h:1", Some(&a)), cluster_id("h:2", Some(&a)));
        assert_ne!(cluster_id("h:1", Some(&a)), cluster_id("h:1", None));
        assert_eq!(
            Secret::new(b"correct horse".to_vec()).key(),
            dsm_tcp_fallback::cluster_key_from_str("correct horse")
        );
    }
}

//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::Path;

use spillstore::SpillStore;

/// A store with `max_size` bytes of memory and `shards` shards in a fresh
/// dump dir inside `parent`.
pub fn store(parent: &Path, max_size: u64, shards: usize) -> SpillStore {
    SpillStore::builder()
        .max_size(max_size)
        .dump_dir(parent.join("dump"))
        .shards(shards)
        .build()
        .expect("build store")
}

/// The names in `dir`, sorted, without the store's lock file.
pub fn data_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != ".spillstore.lock")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A value of `len` bytes that encodes `tag`, so mix-ups are visible.
pub fn value(tag: u64, len: usize) -> Vec<u8> {
    let mut x = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether this process runs as root (needed to mount tmpfs).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Bytes the spill files in `dir` occupy on disk, as `du` counts them
/// (`st_blocks`), for regular files named `spill-*.seg`.
pub fn spill_du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("spill-") && name.ends_with(".seg")
                })
                .filter_map(|e| std::fs::symlink_metadata(e.path()).ok())
                .filter(|m| m.is_file())
                .map(|m| m.blocks() * 512)
                .sum()
        })
        .unwrap_or(0)
}

/// Descriptors this process has open now (`/proc/self/fd`, less the one
/// reading it).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |rd| rd.count().saturating_sub(1))
}

/// The permission bits of `path`.
pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A tmpfs of a given size mounted on a fresh directory, unmounted on drop;
/// `None` (after printing SKIPPED) when not root. Tests holding one run one
/// at a time: `mount` and `umount` are forked children, and a child briefly
/// inherits the test process's open spill files, so space another test just
/// freed could still look used.
pub struct Tmpfs {
    pub path: std::path::PathBuf,
    _parent: tempfile::TempDir,
    _serial: std::sync::MutexGuard<'static, ()>,
}

static TMPFS_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Tmpfs {
    pub fn mount(size: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("SKIPPED: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        let serial = TMPFS_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let parent = tempfile::tempdir().unwrap();
        let path = parent.path().join("mnt");
        std::fs::create_dir(&path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(status.success(), "root, but mount -t tmpfs failed");
        Some(Tmpfs {
            path,
            _parent: parent,
            _serial: serial,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(&self.path)
            .status();
    }
}

/// Runs this test binary's test `name` alone in a child process, with
/// `SPILLSTORE_CHILD` set to `role` and `SPILLSTORE_CHILD_DIR` to `dir`,
/// through `sh -c "<prefix>; exec ..."` (say, a `ulimit`). Stdout is piped.
pub fn spawn_child(name: &str, role: &str, dir: &Path, prefix: &str) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{prefix}; exec \"$0\" \"$@\""))
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env("SPILLSTORE_CHILD", role)
        .env("SPILLSTORE_CHILD_DIR", dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the test binary")
}

/// In a child started by [`spawn_child`]: its role and directory.
pub fn child_role() -> Option<(String, std::path::PathBuf)> {
    let role = std::env::var("SPILLSTORE_CHILD").ok()?;
    let dir = std::env::var_os("SPILLSTORE_CHILD_DIR")?;
    Some((role, dir.into()))
}

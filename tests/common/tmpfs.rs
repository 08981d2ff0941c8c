//! A tmpfs mounted for a test: a real file system that can be filled to its last byte.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a path (the tests run as root in CI: mounting is how a real full disk is
/// made without touching the machine's own). Unmounted on drop.
pub struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    pub fn mount(at: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // CI runs as root; a developer's machine may not.
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must be able to mount a tmpfs (run as root) for the disk-full tests"
            );
            eprintln!("cannot mount a tmpfs here (not root?): the disk-full test does not run");
            return None;
        }
        Some(Self {
            at: at.to_path_buf(),
        })
    }

    /// Fills the file system to its last byte.
    pub fn fill(&self) {
        let mut f = std::fs::File::create(self.at.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..512]).is_ok() {}
        let _ = f.sync_all();
    }

    pub fn free(&self) {
        std::fs::remove_file(self.at.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

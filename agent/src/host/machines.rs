//! Per-round machine bookkeeping of PROTOCOLS.md section 4: find the machines,
//! keep one bootstrapped `<name>-<toolchain>` per machine current, and return the
//! machines that can be offered to controllers.
//!
//! Why this shape: each step that can race with the admin (who swaps revision
//! links at any time) either works on an atomic snapshot or is retried a bounded
//! number of times, and every temporary subvolume is owned by a guard that
//! deletes it unless it was renamed into place.
//!
//! One deliberate difference from bbot: the "is the bootstrapped machine still
//! current" check reads the revision's manifest directly and only snapshots the
//! revision when a bootstrap is actually needed. bbot snapshots every machine
//! every round; with 1,000 machines that is 2,000 btrfs transactions per round.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use manifests::{
    BootstrappedMachineManifest, Document, MacAddress, MachineHeader, MachineManifest,
    ToolchainManifest,
};

use crate::base::cancel::Cancel;
use crate::base::fsutil;
use crate::base::priority::Priority;
use crate::base::version::{self, BootstrappedBy, AGENT_PACKAGE, AGENT_VERSION};
use crate::host::btrfs::{self, BtrfsError};
use crate::host::layout::{self, LayoutError, MachineDir, MANIFEST_FILE};
use crate::host::locks::{self, HoldFor, Holder, LockError, LockFile};
use crate::vm::runner::{BootstrapJob, MachineRunner, RunnerError};

/// How many times the link is resolved and snapshotted again when the admin
/// swaps revisions under our feet.
pub const MAX_ATTEMPTS: u32 = 5;

/// Pause between attempts, giving the admin's swap time to complete.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What the bookkeeping needs to know from the command line.
#[derive(Debug, Clone)]
pub struct MachinesConfig {
    /// `--machines`.
    pub machines: PathBuf,
    /// `--toolchain-name`.
    pub toolchain_name: String,
    /// `--toolchain-id`, when given (a change makes every bootstrap obsolete).
    pub toolchain_id: Option<String>,
    /// `--toolchain-num`, mixed into generated MAC addresses.
    pub toolchain_num: u16,
    /// `--instance`: recorded in machine locks and temporary snapshot names.
    pub instance: u16,
    /// The toolchain lock (`--toolchain-lock`).
    pub toolchain_lock: PathBuf,
    /// `--bootstrap-timeout`.
    pub bootstrap_timeout: Duration,
}

impl MachinesConfig {
    /// The id recorded in the toolchain manifest: `--toolchain-id`, or the
    /// toolchain name when none is given (the manifest needs a non-empty id).
    pub fn recorded_toolchain_id(&self) -> String {
        match &self.toolchain_id {
            Some(id) if !id.is_empty() => id.clone(),
            _ => self.toolchain_name.clone(),
        }
    }
}

/// A machine ready to be offered: its bootstrapped subvolume and manifest.
#[derive(Debug, Clone)]
pub struct BootstrappedMachine {
    /// The `<name>-<toolchain>` subvolume (tasks snapshot it), or the fake path.
    pub path: PathBuf,
    /// Its machine directory, where per-task snapshots are made.
    pub dir: Option<MachineDir>,
    /// The bootstrapped machine manifest.
    pub manifest: BootstrappedMachineManifest,
    /// Its machine lock, held by this instance since enumeration (`None`
    /// for `--fake-machine`, and for a machine a monitor saw busy).
    pub lock: Option<Arc<LockFile>>,
}

impl BootstrappedMachine {
    /// The header offered to controllers.
    pub fn header(&self) -> &MachineHeader {
        &self.manifest.machine.header
    }

    /// Records in its machine lock why this instance holds it.
    pub fn record(&self, holder: &Holder) {
        if let Some(l) = &self.lock {
            l.record(holder);
        }
    }
}

/// A machine another instance holds, as a priority monitor sees it.
#[derive(Debug, Clone)]
pub struct HeldMachine {
    /// The machine (without a lock: it is not ours).
    pub machine: BootstrappedMachine,
    /// Its lock file.
    pub lock_path: PathBuf,
    /// Who holds it and why.
    pub holder: Holder,
}

/// A failure that stops the whole enumeration (as opposed to one machine).
#[derive(Debug, thiserror::Error)]
pub enum MachinesError {
    /// `--machines` is unusable (missing, not btrfs).
    #[error("--machines: {0}")]
    Filesystem(#[from] BtrfsError),
    /// The machines directory or a volume cannot be read.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A stop was requested in the middle of the round.
    #[error("interrupted")]
    Interrupted,
    /// The toolchain lock cannot be taken.
    #[error(transparent)]
    Lock(LockError),
}

impl From<LockError> for MachinesError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Interrupted(_) => MachinesError::Interrupted,
            e => MachinesError::Lock(e),
        }
    }
}

/// Why one machine is skipped this round (logged, the round goes on).
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// Link or directory problem.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// Snapshot, delete or read-only flag problem.
    #[error(transparent)]
    Btrfs(#[from] BtrfsError),
    /// A manifest cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A manifest is malformed.
    #[error(transparent)]
    Manifest(#[from] manifests::Error),
    /// The revision's manifest names another machine than its directory.
    #[error("{path}: machine name '{found}' does not match directory name '{expected}'")]
    NameMismatch {
        /// The manifest file.
        path: PathBuf,
        /// The directory's name.
        expected: String,
        /// The manifest's `name`.
        found: String,
    },
    /// The bootstrap failed.
    #[error("bootstrap failed: {0}")]
    Bootstrap(#[from] RunnerError),
    /// The revision kept changing while we tried to snapshot it.
    #[error("{0}: revision kept changing; giving up for this round")]
    Unstable(PathBuf),
}

/// Deletes a temporary subvolume when dropped unless disarmed; this is what
/// guarantees that no error path leaves a temporary snapshot behind.
#[derive(Debug)]
pub struct TempSubvolume {
    path: Option<PathBuf>,
}

impl TempSubvolume {
    /// Snapshots `src` to `dst` and takes ownership of `dst`.
    pub fn snapshot(src: &Path, dst: PathBuf) -> Result<Self, BtrfsError> {
        btrfs::snapshot(src, &dst)?;
        Ok(Self { path: Some(dst) })
    }

    /// The snapshot's path.
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames the snapshot to `to` and gives up ownership (it is no longer
    /// temporary).
    pub fn rename_into_place(mut self, to: &Path) -> io::Result<()> {
        let from = self.path.take().unwrap_or_default();
        match std::fs::rename(&from, to) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.path = Some(from);
                Err(e)
            }
        }
    }

    /// Deletes the snapshot now, reporting failure.
    pub fn delete(mut self) -> Result<(), BtrfsError> {
        match self.path.take() {
            Some(p) => btrfs::delete(&p),
            None => Ok(()),
        }
    }
}

impl Drop for TempSubvolume {
    fn drop(&mut self) {
        if let Some(p) = self.path.take() {
            if let Err(e) = btrfs::delete(&p) {
                tracing::error!("cannot delete temporary snapshot: {e}");
            }
        }
    }
}

fn read_manifest<T: Document>(path: &Path) -> Result<T, MachineError> {
    let bytes = std::fs::read(path).map_err(|source| MachineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(T::parse(&bytes, &path.display().to_string())?)
}

/// A locally administered MAC for a machine being bootstrapped, used when
/// the machine manifest does not fix one. Random (as bbot's), so that the
/// same machine bootstrapped on two hosts sharing a bridge gets two
/// addresses; it is recorded in the bootstrapped manifest, which keeps it
/// stable for every task of that bootstrap. Falls back to a hash of the
/// machine, toolchain and instance (and the host's boot time) if the
/// kernel's random source cannot be read.
pub fn generate_mac(machine: &str, toolchain: &str, num: u16) -> MacAddress {
    use std::io::Read;
    let mut b = [0u8; 6];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
    if random.is_err() {
        let mut h = DefaultHasher::new();
        (machine, toolchain, num, std::time::SystemTime::now()).hash(&mut h);
        b.copy_from_slice(&h.finish().to_be_bytes()[..6]);
    }
    MacAddress::locally_administered(b)
}

/// Machine enumeration and bootstrap bookkeeping for one agent instance.
pub struct Machines<'a> {
    cfg: MachinesConfig,
    runner: &'a dyn MachineRunner,
    cancel: Cancel,
}

impl<'a> Machines<'a> {
    /// Bookkeeping for `cfg`, bootstrapping through `runner`, stopping when
    /// `cancel` is set.
    pub fn new(cfg: MachinesConfig, runner: &'a dyn MachineRunner, cancel: Cancel) -> Self {
        Self {
            cfg,
            runner,
            cancel,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &MachinesConfig {
        &self.cfg
    }

    /// Checks that `--machines` exists and is on btrfs.
    pub fn check(&self) -> Result<(), MachinesError> {
        Ok(btrfs::check_filesystem(&self.cfg.machines)?)
    }

    /// Takes the toolchain lock, waiting (and saying so once) while
    /// another instance enumerates or bootstraps.
    pub fn toolchain_lock(&self) -> Result<LockFile, MachinesError> {
        let path = &self.cfg.toolchain_lock;
        Ok(LockFile::acquire(path, &self.cancel, |_| {
            tracing::info!(
                "waiting for toolchain lock {} (another instance enumerates or bootstraps)",
                path.display()
            )
        })?)
    }

    /// Deletes temporary snapshots of this toolchain that nobody owns: those
    /// of machines whose lock is free (held locks are skipped: their
    /// snapshots are in use). Run at start under the toolchain lock; every
    /// round does the same for the machines it locks. Returns how many
    /// were deleted.
    pub fn clean_leftovers(&self) -> Result<usize, MachinesError> {
        let _toolchain = self.toolchain_lock()?;
        let mut n = 0;
        for md in layout::machine_dirs(&self.cfg.machines)? {
            match LockFile::try_acquire(&md.lock_file(&self.cfg.toolchain_name)) {
                Ok(Some(_lock)) => n += self.delete_temporaries(&md),
                Ok(None) => tracing::debug!(
                    "{}: in use; its snapshots are not leftovers",
                    md.dir.display()
                ),
                Err(e) => tracing::error!("{e}"),
            }
        }
        Ok(n)
    }

    /// Deletes every temporary snapshot of this toolchain in `md`; the
    /// caller holds its machine lock.
    fn delete_temporaries(&self, md: &MachineDir) -> usize {
        let temps = match md.temporaries(&self.cfg.toolchain_name) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("{e}");
                return 0;
            }
        };
        let mut n = 0;
        for path in temps {
            let r = if btrfs::is_subvolume(&path) {
                btrfs::delete(&path).map_err(|e| e.to_string())
            } else {
                std::fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))
            };
            match r {
                Ok(()) => {
                    tracing::info!("deleted leftover temporary snapshot {}", path.display());
                    n += 1;
                }
                Err(e) => tracing::error!("cannot delete leftover: {e}"),
            }
        }
        n
    }

    /// One round: under the toolchain lock, walks every machine this
    /// instance can lock, bootstraps what needs it, and returns what can be
    /// offered, each with its machine lock held (machines other instances
    /// hold are skipped). Problems with one machine are logged and skip it.
    pub fn enumerate(&self) -> Result<Vec<BootstrappedMachine>, MachinesError> {
        let _toolchain = self.toolchain_lock()?;
        let tc = &self.cfg.toolchain_name;
        let mut out = Vec::new();
        for md in layout::machine_dirs(&self.cfg.machines)? {
            if self.cancel.is_cancelled() {
                return Err(MachinesError::Interrupted);
            }
            let lock = match LockFile::try_acquire(&md.lock_file(tc)) {
                Ok(Some(l)) => l,
                Ok(None) => {
                    tracing::debug!(
                        "machine {}/{}: held by another instance",
                        md.volume,
                        md.name
                    );
                    continue;
                }
                Err(e) => {
                    tracing::error!("machine {}/{}: {e}", md.volume, md.name);
                    continue;
                }
            };
            // Temporary snapshots can only be left where a holder died;
            // start-up (`clean_leftovers`) looks everywhere.
            if lock.holder_died() {
                self.delete_temporaries(&md);
            }
            match self.machine(&md, &lock) {
                Ok(Some(mut m)) => {
                    lock.record(&Holder::me(self.cfg.instance, HoldFor::Offer, Priority(0)));
                    m.lock = Some(Arc::new(lock));
                    out.push(m)
                }
                Ok(None) => {}
                Err(MachineError::Bootstrap(RunnerError::Interrupted)) => {
                    return Err(MachinesError::Interrupted)
                }
                Err(e) => tracing::error!("machine {}/{}: {e}", md.volume, md.name),
            }
        }
        Ok(out)
    }

    /// The bootstrapped machines other instances hold now, with what their
    /// locks record (for a priority monitor). Free machines, and those
    /// whose record is not readable yet, are not listed.
    pub fn held(&self) -> Result<Vec<HeldMachine>, MachinesError> {
        let tc = &self.cfg.toolchain_name;
        let mut out = Vec::new();
        for md in layout::machine_dirs(&self.cfg.machines)? {
            let lock_path = md.lock_file(tc);
            let Some(holder) = locks::holder(&lock_path) else {
                continue;
            };
            let xp = md.bootstrapped(tc);
            let manifest =
                match read_manifest::<BootstrappedMachineManifest>(&xp.join(MANIFEST_FILE)) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!("{}: {e}", xp.display());
                        continue;
                    }
                };
            out.push(HeldMachine {
                machine: BootstrappedMachine {
                    path: xp,
                    dir: Some(md.clone()),
                    manifest,
                    lock: None,
                },
                lock_path,
                holder,
            });
        }
        Ok(out)
    }

    /// Steps 1-5 of section 4 for one machine directory.
    fn machine(
        &self,
        md: &MachineDir,
        lock: &LockFile,
    ) -> Result<Option<BootstrappedMachine>, MachineError> {
        let tc = &self.cfg.toolchain_name;
        let xp = md.bootstrapped(tc);
        for attempt in 1..=MAX_ATTEMPTS {
            let last = attempt == MAX_ATTEMPTS;
            // 1: resolve the link.
            let Some(target) = md.resolve_link()? else {
                if xp.exists() {
                    tracing::info!(
                        "{}: no {} link; deleting",
                        xp.display(),
                        md.link().display()
                    );
                    btrfs::delete(&xp)?;
                }
                return Ok(None);
            };
            let mpath = target.join(MANIFEST_FILE);
            let mm: MachineManifest = match read_manifest(&mpath) {
                Ok(m) => m,
                Err(MachineError::Io { source, .. })
                    if source.kind() == io::ErrorKind::NotFound && !last =>
                {
                    // The revision vanished: the link is being swapped.
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
                Err(e) => return Err(e),
            };
            if mm.header.name != md.name {
                return Err(MachineError::NameMismatch {
                    path: mpath,
                    expected: md.name.clone(),
                    found: mm.header.name,
                });
            }
            // 3: is the bootstrapped machine current?
            if xp.exists() {
                match self.current(&xp, &mm) {
                    Ok(Currency::Current(b)) => {
                        return Ok(Some(BootstrappedMachine {
                            path: xp,
                            dir: Some(md.clone()),
                            manifest: *b,
                            lock: None,
                        }))
                    }
                    Ok(Currency::Newer) => return Ok(None),
                    Ok(Currency::Obsolete(why)) => {
                        tracing::info!("{}: obsolete ({why}); deleting", xp.display())
                    }
                    Err(e) => tracing::warn!("{}: unusable ({e}); deleting", xp.display()),
                }
                btrfs::delete(&xp)?;
            }
            // 2 and 4: snapshot the revision, bootstrap, rename into place.
            let tmp = match TempSubvolume::snapshot(&target, md.temp(tc, self.cfg.instance)) {
                Ok(t) => t,
                Err(e) if !last => {
                    tracing::debug!("snapshot failed ({e}); retrying");
                    std::thread::sleep(RETRY_PAUSE);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            lock.record(&Holder::me(
                self.cfg.instance,
                HoldFor::Bootstrap,
                Priority(0),
            ));
            return self.bootstrap(md, tmp, &xp).map(Some);
        }
        Err(MachineError::Unstable(md.link()))
    }

    /// Decides whether the bootstrapped machine at `xp` is still usable for
    /// revision manifest `mm`.
    fn current(&self, xp: &Path, mm: &MachineManifest) -> Result<Currency, MachineError> {
        let b: BootstrappedMachineManifest = read_manifest(&xp.join(MANIFEST_FILE))?;
        let recorded = b.bootstrap.version_of(AGENT_PACKAGE);
        match version::bootstrapped_by(recorded) {
            BootstrappedBy::Newer => {
                tracing::warn!(
                    "{}: bootstrapped by newer agent {}; ignoring this machine",
                    xp.display(),
                    recorded.unwrap_or_default()
                );
                return Ok(Currency::Newer);
            }
            BootstrappedBy::Older => {
                return Ok(Currency::Obsolete(format!(
                    "bootstrapped by older agent {}",
                    recorded.unwrap_or("(unknown)")
                )))
            }
            BootstrappedBy::Same => {}
        }
        if b.machine.header.id != mm.header.id {
            return Ok(Currency::Obsolete(format!(
                "machine id changed from {} to {}",
                b.machine.header.id, mm.header.id
            )));
        }
        if let Some(id) = &self.cfg.toolchain_id {
            if &b.toolchain.id != id {
                return Ok(Currency::Obsolete(format!(
                    "toolchain id changed from {} to {id}",
                    b.toolchain.id
                )));
            }
        }
        Ok(Currency::Current(Box::new(b)))
    }

    /// Step 4: bootstraps the snapshot `tmp`, writes the bootstrapped machine
    /// manifest into it and renames it to `xp`. On any error `tmp` is deleted.
    fn bootstrap(
        &self,
        md: &MachineDir,
        tmp: TempSubvolume,
        xp: &Path,
    ) -> Result<BootstrappedMachine, MachineError> {
        // The snapshot's own manifest: consistent with the image even if the
        // admin swapped revisions since we looked.
        let mm: MachineManifest = read_manifest(&tmp.path().join(MANIFEST_FILE))?;
        let mac = mm.mac.unwrap_or_else(|| {
            generate_mac(&md.name, &self.cfg.toolchain_name, self.cfg.toolchain_num)
        });
        tracing::info!("bootstrapping {} (id {})", md.name, mm.header.id);
        let job = BootstrapJob {
            machine: &mm,
            subvolume: tmp.path(),
            mac,
            timeout: self.cfg.bootstrap_timeout,
        };
        let mut bs = self.runner.bootstrap(&job, &self.cancel)?;
        // Record which agent bootstrapped it: the obsolescence check relies on it.
        bs.versions.retain(|(p, _)| p != AGENT_PACKAGE);
        bs.versions
            .insert(0, (AGENT_PACKAGE.to_string(), AGENT_VERSION.to_string()));
        let mut machine = mm;
        machine.mac = Some(mac);
        let bm = BootstrappedMachineManifest {
            machine,
            toolchain: ToolchainManifest {
                id: self.cfg.recorded_toolchain_id(),
                extra: Vec::new(),
            },
            bootstrap: bs,
        };
        let text = bm.to_text()?;
        let mpath = tmp.path().join(MANIFEST_FILE);
        fsutil::write_atomic(&mpath, text.as_bytes()).map_err(|source| MachineError::Io {
            path: mpath,
            source,
        })?;
        let tpath = tmp.path().to_path_buf();
        tmp.rename_into_place(xp)
            .map_err(|source| MachineError::Io {
                path: tpath,
                source,
            })?;
        if let Err(e) = btrfs::set_read_only(xp, true) {
            tracing::warn!("{e}");
        }
        tracing::info!("bootstrapped {}", xp.display());
        Ok(BootstrappedMachine {
            path: xp.to_path_buf(),
            dir: Some(md.clone()),
            manifest: bm,
            lock: None,
        })
    }
}

/// Outcome of the currency check of step 3.
enum Currency {
    Current(Box<BootstrappedMachineManifest>),
    Newer,
    Obsolete(String),
}

//! Machine, toolchain and bootstrap manifests: what the agent keeps in each
//! machine subvolume and offers to controllers.

use super::fields::{push_unknown, Fields};
use super::{expect_count, Document, SingleManifest};
use crate::error::Error;
use crate::text::Manifest;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// What a machine is for: building packages, or serving a build (a
/// database, say) as an auxiliary machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineRole {
    /// Runs builds.
    Build,
    /// Assists another machine's build.
    Auxiliary,
}

impl MachineRole {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineRole::Build => "build",
            MachineRole::Auxiliary => "auxiliary",
        }
    }
}

impl FromStr for MachineRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "build" => Ok(MachineRole::Build),
            "auxiliary" => Ok(MachineRole::Auxiliary),
            _ => Err(format!("'{s}' is not a role (expected build or auxiliary)")),
        }
    }
}

/// How a machine is run. This project runs `kvm` machines; `nspawn` is
/// read so that a bbot machines tree with containers parses, and such
/// machines are skipped by the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineType {
    /// A QEMU/KVM virtual machine.
    Kvm,
    /// A systemd-nspawn container (not run by this agent).
    Nspawn,
}

impl MachineType {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineType::Kvm => "kvm",
            MachineType::Nspawn => "nspawn",
        }
    }
}

impl FromStr for MachineType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(MachineType::Kvm),
            "nspawn" => Ok(MachineType::Nspawn),
            _ => Err(format!(
                "'{s}' is not a machine type (expected kvm or nspawn)"
            )),
        }
    }
}

/// A guest NIC's MAC address. Kept stable per bootstrapped machine so a
/// guest's network identity does not change between tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// A unicast, locally administered address from arbitrary (random)
    /// bytes: such addresses can never clash with a vendor's.
    pub fn locally_administered(mut bytes: [u8; 6]) -> MacAddress {
        bytes[0] = (bytes[0] | 0x02) & !0x01;
        MacAddress(bytes)
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("'{s}' is not a MAC address (expected six hex octets like 52:54:00:12:34:56)")
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(MacAddress(bytes))
    }
}

/// What the agent tells a controller about a machine it offers; also the
/// first part of the machine manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineHeader {
    /// Revision id: a change means a new machine (re-bootstrap).
    pub id: String,
    /// The name tasks ask for.
    pub name: String,
    /// One line for people.
    pub summary: String,
    /// Build or auxiliary machine.
    pub role: Option<MachineRole>,
    /// Least RAM the machine needs, KiB.
    pub ram_minimum: Option<u64>,
    /// Most RAM the machine can use, KiB.
    pub ram_maximum: Option<u64>,
    /// Unknown fields, in order.
    pub extra: Vec<(String, String)>,
}

impl MachineHeader {
    fn read(f: &mut Fields<'_>) -> Result<Self, Error> {
        Ok(MachineHeader {
            id: f.required("id")?,
            name: f.required("name")?,
            summary: f.required("summary")?,
            role: f.optional_parsed("role")?,
            ram_minimum: f.optional_positive("ram-minimum")?,
            ram_maximum: f.optional_positive("ram-maximum")?,
            extra: Vec::new(),
        })
    }

    fn write(&self, m: &mut Manifest) {
        m.push("id", &self.id);
        m.push("name", &self.name);
        m.push("summary", &self.summary);
        m.push_opt("role", self.role.map(MachineRole::as_str));
        m.push_opt("ram-minimum", self.ram_minimum.map(|n| n.to_string()));
        m.push_opt("ram-maximum", self.ram_maximum.map(|n| n.to_string()));
    }
}

impl SingleManifest for MachineHeader {
    const KIND: &'static str = "machine header";

    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let mut f = Fields::new(manifest, <Self as SingleManifest>::KIND);
        let mut header = MachineHeader::read(&mut f)?;
        header.extra = f.unknown();
        Ok(header)
    }

    fn to_manifest(&self) -> Manifest {
        let mut m = Manifest::new("");
        self.write(&mut m);
        push_unknown(&mut m, &self.extra);
        m
    }
}

/// The `manifest` file an admin puts in a machine revision subvolume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineManifest {
    /// Identity offered to controllers (its `extra` stays empty here).
    pub header: MachineHeader,
    /// How to run it.
    pub machine_type: MachineType,
    /// The guest NIC's address; filled in at bootstrap.
    pub mac: Option<MacAddress>,
    /// Extra QEMU arguments, whitespace separated, quotes allowed.
    pub options: Option<String>,
    /// What changed in this revision, for people.
    pub changes: Option<String>,
    /// Unknown fields, in order.
    pub extra: Vec<(String, String)>,
}

impl MachineManifest {
    /// The `options` split into arguments the way a shell would (quotes
    /// group, no expansion), so an admin can write `-drive "file=a b.img"`.
    pub fn option_args(&self) -> Result<Vec<String>, Error> {
        let Some(options) = &self.options else {
            return Ok(Vec::new());
        };
        shlex::split(options).ok_or_else(|| {
            Error::invalid(
                "",
                Default::default(),
                format!(
                    "machine '{}': unbalanced quotes in options '{options}'",
                    self.header.name
                ),
            )
        })
    }
}

impl SingleManifest for MachineManifest {
    const KIND: &'static str = "machine";

    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let mut f = Fields::new(manifest, <Self as SingleManifest>::KIND);
        let header = MachineHeader::read(&mut f)?;
        let machine_type = f.required_parsed("type")?;
        let mac = f.optional_parsed("mac")?;
        let options = f.optional_string("options")?;
        if let (Some(opts), Some(nv)) = (
            &options,
            manifest.values.iter().find(|nv| nv.name == "options"),
        ) {
            if shlex::split(opts).is_none() {
                return Err(f.error_at(nv, "unbalanced quotes in 'options'"));
            }
        }
        let changes = f.optional("changes")?.map(|nv| nv.value.clone());
        Ok(MachineManifest {
            header,
            machine_type,
            mac,
            options,
            changes,
            extra: f.unknown(),
        })
    }

    fn to_manifest(&self) -> Manifest {
        let mut m = Manifest::new("");
        self.header.write(&mut m);
        m.push("type", self.machine_type.as_str());
        m.push_opt("mac", self.mac.map(|a| a.to_string()));
        m.push_opt("options", self.options.as_deref());
        m.push_opt("changes", self.changes.as_deref());
        push_unknown(&mut m, &self.extra);
        m
    }
}

/// The toolchain a machine was bootstrapped for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolchainManifest {
    /// Toolchain id: a change makes bootstrapped machines obsolete.
    pub id: String,
    /// Unknown fields, in order.
    pub extra: Vec<(String, String)>,
}

impl SingleManifest for ToolchainManifest {
    const KIND: &'static str = "toolchain";

    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let mut f = Fields::new(manifest, <Self as SingleManifest>::KIND);
        let id = f.required("id")?;
        Ok(ToolchainManifest {
            id,
            extra: f.unknown(),
        })
    }

    fn to_manifest(&self) -> Manifest {
        let mut m = Manifest::new("");
        m.push("id", &self.id);
        push_unknown(&mut m, &self.extra);
        m
    }
}

/// What a guest reports after bootstrapping: the versions of the software
/// it was set up with (`<package>-version` pairs), so the agent can tell
/// when a machine was bootstrapped by an older or newer guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BootstrapManifest {
    /// `(package, version)` pairs, in order.
    pub versions: Vec<(String, String)>,
    /// Unknown (non `-version`) fields, in order.
    pub extra: Vec<(String, String)>,
}

/// The bootstrap field that names the guest worker's version.
pub const WORKER_GUEST_PACKAGE: &str = "worker-guest";

/// What a bootstrap field's name ends with: `<package>-version`.
const VERSION_SUFFIX: &str = "-version";

impl BootstrapManifest {
    /// The version recorded for `package`, if any.
    pub fn version_of(&self, package: &str) -> Option<&str> {
        self.versions
            .iter()
            .find(|(p, _)| p == package)
            .map(|(_, v)| v.as_str())
    }

    /// Records (or replaces) the version of `package`.
    pub fn set_version(&mut self, package: &str, version: &str) {
        match self.versions.iter_mut().find(|(p, _)| p == package) {
            Some(entry) => entry.1 = version.to_string(),
            None => self
                .versions
                .push((package.to_string(), version.to_string())),
        }
    }
}

impl SingleManifest for BootstrapManifest {
    const KIND: &'static str = "bootstrap";

    fn from_manifest(manifest: &Manifest) -> Result<Self, Error> {
        let mut f = Fields::new(manifest, <Self as SingleManifest>::KIND);
        let pairs = f.take_where(|n| n.len() > VERSION_SUFFIX.len() && n.ends_with(VERSION_SUFFIX));
        let mut versions = Vec::with_capacity(pairs.len());
        // The guest writes this manifest: duplicates are found through a
        // set, so that a manifest of many `-version` pairs costs linear
        // time, not a scan of the earlier ones per pair.
        let mut seen: HashSet<&str> = HashSet::with_capacity(pairs.len());
        for nv in pairs {
            if nv.value.is_empty() {
                return Err(f.error_at(nv, format!("empty value for field '{}'", nv.name)));
            }
            let package = nv.name.strip_suffix(VERSION_SUFFIX).unwrap_or_default();
            if !seen.insert(package) {
                return Err(f.error_at(
                    nv,
                    format!("duplicate field '{}' in bootstrap manifest", nv.name),
                ));
            }
            versions.push((package.to_string(), nv.value.clone()));
        }
        if !seen.contains(WORKER_GUEST_PACKAGE) {
            return Err(f.error_here(format!(
                "missing required field '{WORKER_GUEST_PACKAGE}-version' in bootstrap manifest"
            )));
        }
        Ok(BootstrapManifest {
            versions,
            extra: f.unknown(),
        })
    }

    fn to_manifest(&self) -> Manifest {
        let mut m = Manifest::new("");
        for (package, version) in &self.versions {
            m.push(format!("{package}{VERSION_SUFFIX}"), version);
        }
        push_unknown(&mut m, &self.extra);
        m
    }
}

/// The `manifest` of a bootstrapped `<name>-<toolchain>` subvolume: the
/// machine (with its MAC), the toolchain and the bootstrap, in that order.
/// Everything the agent needs to decide whether the snapshot is current.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrappedMachineManifest {
    /// The machine as bootstrapped (`mac` filled in).
    pub machine: MachineManifest,
    /// The toolchain it was bootstrapped for.
    pub toolchain: ToolchainManifest,
    /// What the guest reported.
    pub bootstrap: BootstrapManifest,
}

impl Document for BootstrappedMachineManifest {
    const KIND: &'static str = "bootstrapped machine";

    fn from_stream(stream: &[Manifest], source: &str) -> Result<Self, Error> {
        expect_count(stream, source, 3, Self::KIND)?;
        Ok(BootstrappedMachineManifest {
            machine: MachineManifest::from_manifest(&stream[0])?,
            toolchain: ToolchainManifest::from_manifest(&stream[1])?,
            bootstrap: BootstrapManifest::from_manifest(&stream[2])?,
        })
    }

    fn to_stream(&self) -> Vec<Manifest> {
        vec![
            self.machine.to_manifest(),
            self.toolchain.to_manifest(),
            self.bootstrap.to_manifest(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddress = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:0f");
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:11",
            "5:54:00:ab:cd:0f",
            "zz:54:00:ab:cd:0f",
        ] {
            assert!(bad.parse::<MacAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn locally_administered_sets_local_and_clears_multicast() {
        let mac = MacAddress::locally_administered([0xff; 6]);
        assert_eq!(mac.0[0] & 0x03, 0x02);
    }

    #[test]
    fn bootstrap_duplicates_are_errors_and_versions_keep_their_order() {
        let read = |text: &str| {
            let m = crate::text::parse_manifest(text.as_bytes(), "b").unwrap();
            BootstrapManifest::from_manifest(&m)
        };
        let b = read(": 1\nu-boot-version: 2\nworker-guest-version: 1\nx: y\n").unwrap();
        assert_eq!(
            b.versions,
            [
                ("u-boot".into(), "2".into()),
                ("worker-guest".into(), "1".into())
            ]
        );
        assert_eq!(b.extra, [("x".into(), "y".into())]);
        let e = read(": 1\nworker-guest-version: 1\na-version: 1\na-version: 2\n").unwrap_err();
        assert_eq!((e.position().line, e.position().column), (4, 12));
        assert_eq!(
            e.message(),
            "duplicate field 'a-version' in bootstrap manifest"
        );
    }
}

//! What the agent provides one guest for one session, set up before QEMU
//! starts and torn down after it: the guest's network namespace (user
//! networking), its cgroup, its TFTP server and, for a task, the server of
//! its source. Dropping a `GuestServices` stops the servers before the
//! namespace and the group go (fields drop in declaration order).

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use manifests::guest;

use crate::vm::cgroup::{self, VmCgroup};
use crate::vm::mirror::Mirror;
use crate::vm::netns::GuestNetns;
use crate::vm::runner::RunnerError;
use crate::vm::source_server::SourceServer;
use crate::vm::tftp::{EnterFn, Phase, SessionRules, TftpServer};

/// How to set up one session's services.
pub struct ServicesSpec<'a> {
    /// The session's phase (what its TFTP server allows).
    pub phase: Phase,
    /// The TFTP GET and PUT directories.
    pub get_dir: &'a Path,
    /// See `get_dir`.
    pub put_dir: &'a Path,
    /// Where the servers listen (in the namespace, when there is one) and
    /// the address the guest is told.
    pub bind: IpAddr,
    /// See `bind`.
    pub advertised: IpAddr,
    /// The name of the session's namespace and cgroup
    /// (`bbot-<toolchain>-<num>-<pid>-<n>`).
    pub name: &'a str,
    /// Whether the guest gets a namespace of its own (user networking).
    pub own_netns: bool,
    /// The VM's cgroup: the host's version and the limits (`None`: no
    /// usable controllers).
    pub cgroup: Option<(cgroup::Hierarchy, cgroup::Limits)>,
    /// The task's mirror and a fresh directory for its server (tasks only).
    pub source: Option<(&'a Mirror, &'a Path)>,
}

/// One session's services.
pub struct GuestServices {
    // Declaration order is drop order: servers first. The source server
    // is only ever dropped: it serves on its own thread.
    _source: Option<SourceServer>,
    tftp: TftpServer,
    netns: Option<Arc<GuestNetns>>,
    cgroup: Option<Arc<VmCgroup>>,
    tftp_addr: String,
    source_url: Option<String>,
    source_port: Option<u16>,
}

fn failed(what: &str) -> impl Fn(String) -> RunnerError + '_ {
    move |e| RunnerError::Failed(format!("cannot set up the guest's {what}: {e}"))
}

impl GuestServices {
    /// Sets up the services of `spec`.
    pub fn open(spec: &ServicesSpec<'_>) -> Result<GuestServices, RunnerError> {
        let netns = match spec.own_netns {
            false => None,
            true => Some(Arc::new(
                GuestNetns::create(spec.name).map_err(|e| failed("network")(e.to_string()))?,
            )),
        };
        let cgroup = match &spec.cgroup {
            None => None,
            Some((hierarchy, limits)) => Some(Arc::new(
                VmCgroup::create(hierarchy, spec.name, *limits)
                    .map_err(|e| failed("cgroup")(e.to_string()))?,
            )),
        };
        // The TFTP server's thread enters the namespace: TFTP answers each
        // transfer from a new socket, which must be there too.
        let enter: Option<EnterFn> = netns.as_ref().map(|ns| {
            let ns = Arc::clone(ns);
            Box::new(move || ns.enter_current_thread()) as EnterFn
        });
        let tftp = TftpServer::start_in(
            spec.bind,
            spec.get_dir,
            spec.put_dir,
            SessionRules::for_phase(spec.phase),
            enter,
        )
        .map_err(|e| failed("TFTP server")(e.to_string()))?;
        let tftp_addr = SocketAddr::new(spec.advertised, tftp.local_addr().port()).to_string();
        // The task's source, for this guest only (the TFTP session's peer).
        let source = match spec.source {
            None => None,
            Some((mirror, base)) => {
                let bind = || TcpListener::bind(SocketAddr::new(spec.bind, 0));
                let listener = match &netns {
                    Some(ns) => ns.within(bind).map_err(|e| e.to_string()),
                    None => bind().map_err(|e| e.to_string()),
                }
                .map_err(failed("source server"))?;
                Some(
                    SourceServer::start(listener, &mirror.path, base, tftp.peer())
                        .map_err(|e| failed("source server")(e.to_string()))?,
                )
            }
        };
        let source_url = source.as_ref().map(|s| {
            format!(
                "git://{}/{}",
                SocketAddr::new(spec.advertised, s.local_addr().port()),
                guest::SOURCE_REPOSITORY
            )
        });
        let source_port = source.as_ref().map(|s| s.local_addr().port());
        Ok(GuestServices {
            _source: source,
            tftp,
            netns,
            cgroup,
            tftp_addr,
            source_url,
            source_port,
        })
    }

    /// The TFTP server.
    pub fn tftp(&self) -> &TftpServer {
        &self.tftp
    }

    /// `host:port` of the TFTP server, as the guest reaches it.
    pub fn tftp_addr(&self) -> &str {
        &self.tftp_addr
    }

    /// The ports the guest may reach on the host: TFTP (UDP) and, for a
    /// task, the source (TCP).
    pub fn ports(&self) -> (u16, Option<u16>) {
        (self.tftp.local_addr().port(), self.source_port)
    }

    /// The git URL of the source, as the guest reaches it.
    pub fn source_url(&self) -> Option<&str> {
        self.source_url.as_deref()
    }

    /// The guest's namespace, for QEMU to start in.
    pub fn netns(&self) -> Option<Arc<GuestNetns>> {
        self.netns.clone()
    }

    /// The VM's cgroup, for QEMU to join.
    pub fn cgroup(&self) -> Option<Arc<VmCgroup>> {
        self.cgroup.clone()
    }

    /// The services, for the log.
    pub fn describe(&self) -> String {
        let mut s = format!("TFTP at {}", self.tftp_addr);
        if let Some(u) = &self.source_url {
            s.push_str(&format!(", source at {u}"));
        }
        if let Some(n) = &self.netns {
            s.push_str(&format!(", network namespace {}", n.name()));
        }
        s
    }
}

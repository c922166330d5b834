//! Running iproute2's `ip`, for the guests' tap devices and network
//! namespaces: one place that turns its failure into a message naming the
//! command and quoting what `ip` said.

use std::process::Command;

/// Runs `ip args...`.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

//! The guest's init script is shell, so it cannot import the guest
//! contract: check that it says what `manifests::guest` says.

use manifests::guest::{self, Phase};

#[test]
fn init_script_reads_the_contracts_mode_keys() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../machines/guest/bbot-init");
    let init = std::fs::read_to_string(path).expect("machines/guest/bbot-init");
    let fw = guest::fw_cfg_sysfs_path(guest::FW_CFG_MODE);
    assert!(
        init.contains(&format!("fw={fw}")),
        "{path} does not read {fw}"
    );
    let param = format!("{}=", guest::CMDLINE_MODE);
    assert!(
        init.contains(&format!("{param}*) mode=${{arg#{param}}}")),
        "{path} does not read {param} from the command line"
    );
    assert!(
        init.contains(&format!("mode={}", Phase::Task.as_str())),
        "{path}: the default mode is not '{}'",
        Phase::Task
    );
    // worker-guest's subcommands are the phase names.
    assert!(init.contains("worker-guest \"$mode\""), "{path}");
}

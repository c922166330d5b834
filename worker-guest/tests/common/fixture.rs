//! A small firmware tree shaped like U-Boot, generated for the tests (not a
//! copy of U-Boot): a git repository with several commits, a `Makefile`
//! honouring `O=`, `CROSS_COMPILE`, `-j` and `<board>_defconfig` that links
//! a real ELF `u-boot`, a `Kconfig` good enough for buildman's board scan,
//! defconfigs and MAINTAINERS files for five boards on two architectures.
//!
//! Boards:
//! - `sandbox` (host gcc): always builds.
//! - `sandbox_warn` (host gcc): builds with a compiler warning at every
//!   commit.
//! - `sandbox_broken` (host gcc): fails at commit 2, fixed at commit 3.
//! - `qemu_arm64`, `rpi_arm64` (aarch64-linux-gnu-gcc): always build; the
//!   Makefile refuses a compiler that does not target aarch64.
//!   `qemu_arm64` also links an SPL and a TPL image (`spl/u-boot-spl`,
//!   `tpl/u-boot-tpl`, from objects of their own under `spl/` and `tpl/`),
//!   as many real boards do.
//!
//! Every board also compiles a "device tree" with `$(DTC)`, which is the
//! tree's own `scripts/dtc` built into the output directory unless `DTC`
//! names another (buildman's shared dtc), and `make scripts_dtc` builds
//! dtc and a pylibfdt library, as U-Boot's does.
//!
//! Commits (oldest first): 0 initial; 1 changes `common/version.c`; 2
//! changes `lib/string.c` and breaks `sandbox_broken`; 3 changes the
//! `Kconfig` default of `FIXTURE_VERSION` (forcing a reconfigure) and fixes
//! `sandbox_broken`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The boards of the fixture: (target, buildman arch).
pub const BOARDS: [(&str, &str); 5] = [
    ("sandbox", "sandbox"),
    ("sandbox_warn", "sandbox"),
    ("sandbox_broken", "sandbox"),
    ("qemu_arm64", "aarch64"),
    ("rpi_arm64", "aarch64"),
];

/// The commit (index into `Fixture::commits`) at which `sandbox_broken`
/// fails.
pub const BROKEN_COMMIT: usize = 2;

/// A generated fixture repository.
pub struct Fixture {
    /// The repository (work tree) directory.
    pub dir: PathBuf,
    /// Commit hashes, oldest first.
    pub commits: Vec<String>,
    /// Branch name holding the commits.
    pub branch: String,
}

const MAKEFILE: &str = r##"# Fixture firmware tree for worker-guest tests (not U-Boot).
# Honours O=, CROSS_COMPILE, -j and <board>_defconfig like U-Boot does.

O ?= .
obj := $(patsubst %/,%,$(O))
CC := $(CROSS_COMPILE)gcc
HOSTCC ?= gcc
CFLAGS := -g -Wall -O2 -ffreestanding -fno-pic -fno-stack-protector -fno-asynchronous-unwind-tables $(KCFLAGS)
LDFLAGS := -nostdlib -static -Wl,-e,fixture_entry -Wl,--build-id=none

# Each compiler's messages in one piece even under -j: buildman's summary
# ties a gcc "In function" line to the warning that follows it, so two
# compilers interleaving their stderr would make `buildman -s -e` depend on
# timing, in a local build and in ours alike.
MAKEFLAGS += --output-sync=target

.DEFAULT_GOAL := all
.PHONY: all cfg mrproper scripts_dtc FORCE

%_defconfig: FORCE
	@test -f configs/$@ || { echo "Can't find default configuration \"configs/$@\"!" >&2; exit 1; }
	@echo "  CONF    $@"
	@mkdir -p $(obj)/include/generated
	@cp configs/$@ $(obj)/.config.tmp
	@awk '/^config FIXTURE_VERSION/{f=1} f && /default/{print "CONFIG_FIXTURE_VERSION=" $$2; exit}' Kconfig >> $(obj)/.config.tmp
	@mv $(obj)/.config.tmp $(obj)/.config
	@awk -F= '/^CONFIG_/{v=$$2; if (v=="y") v=1; print "#define " $$1 " " v}' $(obj)/.config > $(obj)/include/generated/autoconf.h.tmp
	@cmp -s $(obj)/include/generated/autoconf.h.tmp $(obj)/include/generated/autoconf.h || mv $(obj)/include/generated/autoconf.h.tmp $(obj)/include/generated/autoconf.h
	@rm -f $(obj)/include/generated/autoconf.h.tmp
	@{ sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=\(.*\)/\1 := \2/p' $(obj)/.config; echo "BOARD := $*"; } > $(obj)/include/config.mk
	@sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=\(.*\)/\1=\2/p' $(obj)/.config > $(obj)/include/autoconf.mk

mrproper:
	@rm -rf $(obj)/common $(obj)/lib $(obj)/board $(obj)/include $(obj)/u-boot $(obj)/u-boot.cfg $(obj)/.config $(obj)/spl $(obj)/tpl

ifneq ($(filter %_defconfig mrproper,$(MAKECMDGOALS)),)
# Configuring: the previous board's settings do not apply.
else ifeq ($(wildcard $(obj)/include/config.mk),)
all cfg:
	@echo "Please run 'make <board>_defconfig' first" >&2; exit 1
else
include $(obj)/include/config.mk

ifeq ($(CONFIG_ARM64),y)
ifeq ($(filter aarch64%,$(shell $(CC) -dumpmachine)),)
$(error $(CC) does not build for aarch64: set CROSS_COMPILE)
endif
endif

srcs := common/main.o common/version.o lib/string.o board/fixture/$(BOARD)/board.o
objs := $(addprefix $(obj)/,$(srcs))
images := $(obj)/u-boot
ifeq ($(CONFIG_SPL),y)
images += $(obj)/spl/u-boot-spl
endif
ifeq ($(CONFIG_TPL),y)
images += $(obj)/tpl/u-boot-tpl
endif

all: $(images) $(obj)/u-boot.cfg $(obj)/u-boot.dtb

# The device tree compiler: $(DTC) when given (buildman's shared dtc),
# else the tree's own, built into this output directory like U-Boot's
# scripts_dtc (with a pylibfdt library next to it).
DTC_INTREE := $(obj)/scripts/dtc/dtc
DTC ?= $(DTC_INTREE)

$(obj)/u-boot.dtb: $(DTC)
	@echo "  DTC     $(DTC)"
	@$(DTC) > $@

scripts_dtc: $(DTC_INTREE) $(obj)/scripts/dtc/pylibfdt/_libfdt.so

$(DTC_INTREE): scripts/dtc/dtc.c
	@mkdir -p $(dir $@)
	$(HOSTCC) -o $@ $<

$(obj)/scripts/dtc/pylibfdt/_libfdt.so: scripts/dtc/pylibfdt/libfdt.c
	@mkdir -p $(dir $@)
	$(HOSTCC) -shared -fPIC -o $@ $<

$(obj)/spl/u-boot-spl: $(addprefix $(obj)/spl/,$(srcs))
	@echo "  LD      spl/u-boot-spl"
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^

$(obj)/tpl/u-boot-tpl: $(addprefix $(obj)/tpl/,$(srcs))
	@echo "  LD      tpl/u-boot-tpl"
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $^

$(obj)/spl/%.o: %.c $(obj)/include/generated/autoconf.h
	@mkdir -p $(dir $@)
	@echo "  CC      spl/$*.o"
	$(CC) $(CFLAGS) -DCONFIG_SPL_BUILD -include $(obj)/include/generated/autoconf.h -c -o $@ $<

$(obj)/tpl/%.o: %.c $(obj)/include/generated/autoconf.h
	@mkdir -p $(dir $@)
	@echo "  CC      tpl/$*.o"
	$(CC) $(CFLAGS) -DCONFIG_TPL_BUILD -include $(obj)/include/generated/autoconf.h -c -o $@ $<

cfg: $(obj)/u-boot.cfg

$(obj)/u-boot.cfg: $(obj)/include/generated/autoconf.h
	@cp $< $@

$(obj)/u-boot: $(objs)
	@echo "  LD      u-boot (NPROC $(NPROC))"
	@$(if $(FIXTURE_SLEEP),sleep $(FIXTURE_SLEEP))
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ $(objs)

$(obj)/%.o: %.c $(obj)/include/generated/autoconf.h
	@mkdir -p $(dir $@)
	@echo "  CC      $*.o"
	$(CC) $(CFLAGS) -include $(obj)/include/generated/autoconf.h -c -o $@ $<
endif

FORCE:
"##;

fn kconfig(version: &str) -> String {
    let mut s = String::from("mainmenu \"Fixture firmware\"\n\n");
    s.push_str("choice\n\tprompt \"Target select\"\n\n");
    for (b, _) in BOARDS {
        s.push_str(&format!(
            "config TARGET_{}\n\tbool \"{b}\"\n\n",
            b.to_uppercase()
        ));
    }
    s.push_str("endchoice\n\n");
    s.push_str("config ARM64\n\tbool \"64-bit ARM\"\n\n");
    s.push_str("config SPL\n\tbool \"SPL image\"\n\n");
    s.push_str("config TPL\n\tbool \"TPL image\"\n\n");
    let arm = "TARGET_QEMU_ARM64 || TARGET_RPI_ARM64";
    s.push_str(&format!(
        "config SYS_ARCH\n\tstring\n\tdefault \"arm\" if {arm}\n\tdefault \"sandbox\"\n\n"
    ));
    s.push_str(&format!(
        "config SYS_CPU\n\tstring\n\tdefault \"armv8\" if {arm}\n\tdefault \"sandbox\"\n\n"
    ));
    s.push_str("config SYS_SOC\n\tstring\n\tdefault \"fixture\"\n\n");
    s.push_str("config SYS_VENDOR\n\tstring\n\tdefault \"fixture\"\n\n");
    for sym in ["SYS_BOARD", "SYS_CONFIG_NAME"] {
        s.push_str(&format!("config {sym}\n\tstring\n"));
        for (b, _) in BOARDS {
            s.push_str(&format!(
                "\tdefault \"{b}\" if TARGET_{}\n",
                b.to_uppercase()
            ));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "config FIXTURE_VERSION\n\tint \"Fixture version\"\n\tdefault {version}\n"
    ));
    s
}

fn main_c() -> &'static str {
    "/* Entry point of the fixture image. */\n\
     extern const char *fixture_version(void);\n\
     extern unsigned long fixture_strlen(const char *s);\n\
     extern int board_init(void);\n\
     static const char banner[] = \"Fixture firmware\";\n\
     volatile unsigned long fixture_result;\n\
     void fixture_entry(void)\n{\n\
     \tfixture_result = fixture_strlen(banner) + fixture_strlen(fixture_version()) + board_init() + CONFIG_FIXTURE_VERSION;\n\
     \tfor (;;)\n\t\t;\n}\n"
}

fn version_c(text: &str) -> String {
    format!(
        "/* Version string. */\n\
         #ifdef CONFIG_TARGET_SANDBOX_WARN\n\
         static int unused_in_version;\n\
         #endif\n\
         const char *fixture_version(void)\n{{\n\treturn \"{text}\";\n}}\n"
    )
}

fn string_c(extra: &str) -> String {
    format!(
        "/* String helpers. */\n\
         unsigned long fixture_strlen(const char *s)\n{{\n\
         #ifdef CONFIG_TARGET_SANDBOX_WARN\n\
         \tint unused_in_strlen;\n\
         #endif\n\
         \tunsigned long n = 0;\n\n\
         \twhile (s[n])\n\t\tn++;\n\
         \treturn n{extra};\n}}\n"
    )
}

fn board_c(board: &str, broken: bool) -> String {
    let body = if broken {
        "\treturn 1 +;\n".to_string()
    } else {
        format!("\treturn {};\n", board.len())
    };
    let warn = if board == "sandbox_warn" {
        "\tint unused_in_board;\n\n"
    } else {
        ""
    };
    format!("/* Board set-up for {board}. */\nint board_init(void)\n{{\n{warn}{body}}}\n")
}

fn defconfig(board: &str, arch: &str) -> String {
    let mut s = format!("CONFIG_TARGET_{}=y\n", board.to_uppercase());
    if arch == "aarch64" {
        s.push_str("CONFIG_ARM64=y\n");
    }
    if board == "qemu_arm64" {
        s.push_str("CONFIG_SPL=y\nCONFIG_TPL=y\n");
    }
    s
}

fn maintainers(board: &str) -> String {
    format!(
        "{} BOARD\nM:\tFixture Maintainer <fixture@example.com>\nS:\tMaintained\nF:\tboard/fixture/{board}/\nF:\tconfigs/{board}_defconfig\n",
        board.to_uppercase()
    )
}

fn write(root: &Path, rel: &str, text: &str) {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create fixture dir");
    }
    std::fs::write(&path, text).expect("write fixture file");
}

/// Run git in `dir`, panicking with its output on failure (test set-up).
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.com")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.com")
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn commit(dir: &Path, msg: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "-m", msg]);
    git(dir, &["rev-parse", "HEAD"])
}

impl Fixture {
    /// Generate the fixture repository in `dir` (created if needed).
    pub fn create(dir: &Path) -> Fixture {
        std::fs::create_dir_all(dir).expect("create fixture root");
        git(dir, &["init", "-q", "-b", "master"]);
        write(dir, "Makefile", MAKEFILE);
        write(dir, "Kconfig", &kconfig("1"));
        write(dir, "scripts/show-gnu-make", "#!/bin/sh\necho make\n");
        let script = dir.join("scripts/show-gnu-make");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod show-gnu-make");
        write(dir, ".gitignore", "/build/\n");
        write(dir, "common/main.c", main_c());
        write(dir, "common/version.c", &version_c("v1"));
        write(dir, "lib/string.c", &string_c(""));
        write(
            dir,
            "scripts/dtc/dtc.c",
            "#include <stdio.h>\nint main(void)\n{\n\tputs(\"/dts-v1/; / { };\");\n\treturn 0;\n}\n",
        );
        write(
            dir,
            "scripts/dtc/pylibfdt/libfdt.c",
            "int fixture_fdt(void)\n{\n\treturn 0;\n}\n",
        );
        for (b, arch) in BOARDS {
            write(dir, &format!("configs/{b}_defconfig"), &defconfig(b, arch));
            write(
                dir,
                &format!("board/fixture/{b}/board.c"),
                &board_c(b, false),
            );
            write(
                dir,
                &format!("board/fixture/{b}/MAINTAINERS"),
                &maintainers(b),
            );
        }
        let mut commits = vec![commit(dir, "Initial fixture tree")];

        write(dir, "common/version.c", &version_c("v2"));
        commits.push(commit(dir, "Update the version string"));

        write(dir, "lib/string.c", &string_c(" + 0"));
        write(
            dir,
            "board/fixture/sandbox_broken/board.c",
            &board_c("sandbox_broken", true),
        );
        commits.push(commit(dir, "Tweak strlen and break sandbox_broken"));

        write(dir, "Kconfig", &kconfig("2"));
        write(
            dir,
            "board/fixture/sandbox_broken/board.c",
            &board_c("sandbox_broken", false),
        );
        commits.push(commit(
            dir,
            "Bump the Kconfig version and fix sandbox_broken",
        ));

        Fixture {
            dir: dir.to_path_buf(),
            commits,
            branch: "master".to_string(),
        }
    }

    /// Copy the repository into a worker's work directory, as the boss's
    /// `git push HEAD:refs/heads/work` would, and check out `work`.
    pub fn push_to(&self, work_dir: &Path) {
        std::fs::create_dir_all(work_dir).expect("create work dir");
        if !work_dir.join(".git").exists() {
            git(work_dir, &["init", "-q"]);
        }
        let src = self.dir.to_string_lossy().into_owned();
        git(work_dir, &["fetch", "-q", &src, "+master:refs/heads/work"]);
        git(work_dir, &["checkout", "-qf", "work"]);
    }
}

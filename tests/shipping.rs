//! What the package ships: man pages and completions generated from the CLI (by the
//! packaging-time crate `portcullis-assets`), the systemd unit (checked by systemd-analyze),
//! every asset the .deb lists actually present, and none of the packaging or demo code linked
//! into the runtime binary.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

/// What `scripts/package` generates with `portcullis-assets` (the same library function), in a
/// directory of the calling test's own (`tag`): tests run in parallel, and one test's clean-up
/// must not remove what another is writing.
fn generated(tag: &str) -> PathBuf {
    let dir = common::tmp_dir(&format!("assets-{tag}"));
    portcullis_assets::generate(&dir).expect("generate the man pages and completions");
    dir
}

#[test]
fn man_pages_and_completions_cover_every_visible_command() {
    let dir = generated("pages");
    for cmd in [
        "check",
        "render",
        "diff",
        "apply",
        "confirm",
        "flush",
        "status",
        "log",
        "promote",
        "demote",
        "run",
        "sync-config",
    ] {
        let page = dir.join("man").join(format!("portcullis-{cmd}.1"));
        let text = std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{page:?}: {e}"));
        assert!(text.contains(".TH"), "{page:?} is a man page");
    }
    let run = std::fs::read_to_string(dir.join("man/portcullis-run.1")).expect("run page");
    assert!(run.contains("long\\-poll"), "flags are documented");
    assert!(
        !dir.join("man/portcullis-synth.1").exists(),
        "hidden commands get no page"
    );
    let bash = std::fs::read_to_string(dir.join("completions/portcullis.bash")).expect("bash");
    assert!(bash.contains("confirm") && bash.contains("--confirm-within"));
    assert!(dir.join("completions/_portcullis").exists());
    assert!(dir.join("completions/portcullis.fish").exists());
}

#[test]
fn the_systemd_unit_verifies() {
    if !common::require_tool("systemd-analyze", "systemd") {
        return;
    }
    let unit =
        std::fs::read_to_string(common::repo().join("dist/portcullis.service")).expect("unit");
    // The packaged path does not exist on a build machine: point at the built binary.
    let local = unit.replace("/usr/bin/portcullis", env!("CARGO_BIN_EXE_portcullis"));
    let dir = common::tmp_dir("unit");
    let path = dir.join("portcullis.service");
    std::fs::write(&path, local).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// The agent's unit verifies too, and every asset its package lists exists: it keeps the
/// services alive across agent restarts (`KillMode=process`), which the tests of the agent
/// (adoption after a restart) rely on.
#[test]
fn the_agent_package_and_its_unit() {
    let unit = std::fs::read_to_string(common::repo().join("dist/portcullis-agent.service"))
        .expect("agent unit");
    assert!(
        unit.contains("\nKillMode=process\n"),
        "services outlive the agent"
    );
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(common::repo().join("agent/Cargo.toml")).expect("Cargo.toml"),
    )
    .expect("toml");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("assets");
    for asset in assets {
        let source = asset[0].as_str().expect("source");
        if source == "target/release/portcullis-agent" {
            continue; // built by scripts/package itself
        }
        let path = common::repo().join("agent").join(source);
        assert!(path.exists(), "{source}: nothing at {}", path.display());
    }
    if !common::require_tool("systemd-analyze", "systemd") {
        return;
    }
    // The agent binary is not built by this package's tests: any executable stands in for it
    // (verify checks the unit, not the agent).
    let local = unit.replace(
        "/usr/bin/portcullis-agent",
        env!("CARGO_BIN_EXE_portcullis"),
    );
    let dir = common::tmp_dir("agent-unit");
    let path = dir.join("portcullis-agent.service");
    std::fs::write(&path, local).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

/// Every `assets` source of `[package.metadata.deb]` exists once the generator has run, so
/// `scripts/package` cannot fail on a renamed file.
#[test]
fn every_packaged_asset_exists() {
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(common::repo().join("Cargo.toml")).expect("Cargo.toml"),
    )
    .expect("toml");
    let assets = manifest["package"]["metadata"]["deb"]["assets"]
        .as_array()
        .expect("assets");
    let generated = generated("listed");
    for asset in assets {
        let source = asset[0].as_str().expect("source");
        if source == "target/release/portcullis" {
            continue; // built by scripts/package itself
        }
        let path = match source.strip_prefix("target/assets/") {
            Some(rest) => generated.join(rest),
            None => common::repo().join(source),
        };
        assert!(matches(&path), "{source}: nothing at {}", path.display());
    }
}

/// `path` exists, or (with a `*` in its file name) matches at least one file.
fn matches(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some((prefix, suffix)) = name.split_once('*') else {
        return path.exists();
    };
    let dir = path.parent().expect("parent");
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(suffix)
        })
    })
}

/// The packaged binary links neither ADMIN (whose only user is `portcullis-demo`) nor the man
/// page and completion generators (`portcullis-assets`, run at packaging time): read from the
/// dependency graph cargo itself resolves, so a new dependency path is caught too.
#[test]
fn the_runtime_binary_links_neither_admin_nor_the_packaging_tools() {
    let tree = |edges: &str| {
        let out = Command::new(env!("CARGO"))
            .args([
                "tree",
                "--offline",
                "--locked",
                "-p",
                "portcullis",
                "-e",
                edges,
            ])
            .args(["--prefix", "none", "--format", "{p}"])
            .current_dir(common::repo())
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let crates = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect()
    };
    let runtime = crates(&tree("normal,build"));
    assert!(runtime.iter().any(|c| c == "reqwest"), "the tree is read");
    for unwanted in [
        "portcullis-admin",
        "portcullis-demo",
        "portcullis-assets",
        "clap_mangen",
        "clap_complete",
    ] {
        assert!(
            !runtime.iter().any(|c| c == unwanted),
            "{unwanted} is linked into the gateway"
        );
    }
    // Not even for its tests and benches: ADMIN stays out of the gateway's build graph.
    let all = crates(&tree("all"));
    assert!(!all.iter().any(|c| c == "portcullis-admin"));
}

/// ADMIN's package: its unit verifies, runs as its own unprivileged user under the same kind
/// of sandbox as the gateway's, takes its arguments from the conffile, and every asset exists
/// (the example catalog included, shipped as documentation).
#[test]
fn the_admin_package_and_its_unit() {
    let unit = std::fs::read_to_string(common::repo().join("dist/portcullis-admin.service"))
        .expect("admin unit");
    for line in [
        "User=portcullis-admin",
        "EnvironmentFile=/etc/portcullis-admin/admin.env",
        "ExecStart=/usr/bin/portcullis-admin serve $PORTCULLIS_ADMIN_ARGS",
        "ProtectSystem=strict",
        "StateDirectory=portcullis-admin",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line}");
    }
    let manifest: toml::Value = toml::from_str(
        &std::fs::read_to_string(common::repo().join("admin/Cargo.toml")).expect("Cargo.toml"),
    )
    .expect("toml");
    let deb = &manifest["package"]["metadata"]["deb"];
    let conf_files: Vec<&str> = deb["conf-files"]
        .as_array()
        .expect("conf-files")
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert_eq!(conf_files, ["/etc/portcullis-admin/admin.env"]);
    let admin = common::repo().join("admin");
    let scripts = deb["maintainer-scripts"]
        .as_str()
        .expect("maintainer-scripts");
    let postinst = std::fs::read_to_string(admin.join(scripts).join("postinst")).expect("postinst");
    assert!(
        postinst.contains("adduser --system"),
        "the user the unit names"
    );
    for asset in deb["assets"].as_array().expect("assets") {
        let source = asset[0].as_str().expect("source");
        if source == "target/release/portcullis-admin" {
            continue; // built by scripts/package itself
        }
        // `DIR/**/*`: a whole tree (cargo-deb keeps the paths below DIR).
        let ok = match source.strip_suffix("/**/*") {
            Some(dir) => std::fs::read_dir(admin.join(dir)).is_ok_and(|mut e| e.next().is_some()),
            None => matches(&admin.join(source)),
        };
        assert!(ok, "{source}: nothing at {}", admin.join(source).display());
    }
    // That `serve` accepts the conffile's arguments: admin/tests/package_defaults.rs.
    if !common::require_tool("systemd-analyze", "systemd") {
        return;
    }
    // ADMIN's binary is not built by this package's tests: any executable stands in for it.
    let local = unit.replace(
        "/usr/bin/portcullis-admin",
        env!("CARGO_BIN_EXE_portcullis"),
    );
    let dir = common::tmp_dir("admin-unit");
    let path = dir.join("portcullis-admin.service");
    std::fs::write(&path, local).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

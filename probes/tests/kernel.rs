//! Tests against the running kernel. They need root and BPF, so they are `#[ignore]`d: a plain
//! `cargo test` reports them ignored, and `./run-tests` (as root in CI) runs them with
//! `--include-ignored`, where a missing requirement fails the test, saying which. Filesystem
//! setup happens in a private mount namespace: the test binary
//! re-runs itself for one test, in a child that called `unshare(CLONE_NEWNS)` and made every mount
//! private, so the tmpfs over `/run` and the bind mounts never reach the machine's own `/run`.

use std::{
    collections::{BTreeSet, HashSet},
    ffi::CString,
    fs,
    os::unix::{fs::symlink, process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use picket_probes::{Access, OpenEvent, Probes, Strategy};

const INNER_ENV: &str = "PICKET_PROBES_TEST_INNER";
const K8S_DIR: &str = "/run/secrets/kubernetes.io/serviceaccount";
const K8S_TS: &str = "..2026_11_22_10_00_00.000000001";
const EKS_DIR: &str = "/run/secrets/eks.amazonaws.com/serviceaccount";
const EKS_TS: &str = "..2026_11_22_10_00_00.000000002";

/// Fails `test` because what it needs is missing: these tests run only when asked for
/// (`--include-ignored`), and then must not pass without having run.
fn unavailable(test: &str, reason: &str) -> ! {
    panic!("{test} cannot run here: {reason}");
}

/// Why these tests cannot run here, if they cannot.
fn missing_requirement() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Some("the kernel has no BTF (/sys/kernel/btf/vmlinux)".into());
    }
    // A one-slot array map: the cheapest proof that the bpf() syscall works for us.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        pad: [u8; 112],
    }
    let attr = MapCreate {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        pad: [0; 112],
    };
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attribute of the size we pass.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            size_of::<MapCreate>(),
        )
    };
    if fd < 0 {
        return Some(format!(
            "the bpf() syscall is unavailable: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a descriptor we own.
    unsafe { libc::close(fd as i32) };
    None
}

/// Returns true in the child that should run the test body. In the parent, runs this one test
/// again in a child with a private mount namespace, checks that it passed and returns false.
fn in_private_mount_namespace(test: &str) -> bool {
    if std::env::var(INNER_ENV).as_deref() == Ok(test) {
        return true;
    }
    if let Some(reason) = missing_requirement() {
        unavailable(test, &reason);
    }
    let mut child = Command::new(std::env::current_exe().unwrap());
    child
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, test);
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (unshare, mount) on static strings.
    unsafe {
        child.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Make every mount private so nothing done in here propagates to the machine.
            let none = c"none".as_ptr();
            let root = c"/".as_ptr();
            if libc::mount(
                none,
                root,
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = child
        .output()
        .expect("running the test in a private mount namespace");
    print!("{}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{test} failed in its mount namespace"
    );
    // A filter that matched nothing would also exit 0.
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in its mount namespace"
    );
    false
}

fn mount(fstype: &str, source: &str, target: &str, flags: libc::c_ulong) {
    let c = |s: &str| CString::new(s).unwrap();
    let (source, target, fstype) = (c(source), c(target), c(fstype));
    // SAFETY: valid NUL-terminated strings for the duration of the call, no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            if flags & libc::MS_BIND != 0 {
                std::ptr::null()
            } else {
                fstype.as_ptr()
            },
            flags,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "mount {fstype:?} on {target:?}: {}",
        std::io::Error::last_os_error()
    );
}

/// Writes the files of a projected service account volume into `dir`, kubelet style: the data
/// in a timestamped directory, `..data` pointing at it, and each file a symlink through `..data`.
fn projected_volume(dir: &Path, timestamp: &str, files: &[(&str, &str)]) {
    fs::create_dir_all(dir.join(timestamp)).unwrap();
    for (name, content) in files {
        fs::write(dir.join(timestamp).join(name), content).unwrap();
        symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    symlink(timestamp, dir.join("..data")).unwrap();
}

/// Builds the service account layouts under a fresh tmpfs on /run (this process's namespace
/// only). The Kubernetes one is its own tmpfs, bind-mounted into place as kubelet does.
fn kubelet_layout() {
    mount("tmpfs", "tmpfs", "/run", 0);
    let volume = Path::new(
        "/run/kubelet/pods/0f0e0d0c-0b0a-0908-0706-050403020100/volumes/kubernetes.io~projected/kube-api-access-x7q2z",
    );
    fs::create_dir_all(volume).unwrap();
    mount("tmpfs", "tmpfs", volume.to_str().unwrap(), 0);
    projected_volume(
        volume,
        K8S_TS,
        &[
            ("token", "k8s-token"),
            ("ca.crt", "k8s-ca"),
            ("namespace", "default"),
        ],
    );
    fs::create_dir_all(K8S_DIR).unwrap();
    mount("", volume.to_str().unwrap(), K8S_DIR, libc::MS_BIND);
    projected_volume(Path::new(EKS_DIR), EKS_TS, &[("token", "eks-token")]);

    // Debian's /var/run is a symlink to /run; anything else would change the expected paths.
    let var_run = fs::canonicalize("/var/run").unwrap();
    assert_eq!(var_run, Path::new("/run"), "/var/run must resolve to /run");
}

/// A renamed copy of cat in a fresh directory, so the exe path and comm are ours alone.
struct Scratch {
    dir: PathBuf,
    xcat: PathBuf,
}

impl Scratch {
    fn new(test: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("picket-probes-{test}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let dir = fs::canonicalize(dir).unwrap();
        let xcat = dir.join("xcat");
        fs::copy("/bin/cat", &xcat).unwrap();
        Scratch { dir, xcat }
    }

    /// Runs `xcat path` (in `cwd`, if given), checks it printed `expect` and returns its pid.
    fn cat(&self, path: &str, cwd: Option<&str>, expect: &str) -> u32 {
        let mut cmd = Command::new(&self.xcat);
        cmd.arg(path).stdin(Stdio::null());
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "xcat {path} failed");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            expect,
            "xcat {path}"
        );
        pid
    }

    /// Opens `path` from a shell redirection (`<`, `>>` or `<>`); returns the shell's pid.
    fn shell_open(&self, redirect: &str, path: &str) -> u32 {
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(": {redirect} '{path}'"))
            .spawn()
            .unwrap();
        let pid = status.id();
        let out = status.wait_with_output().unwrap();
        assert!(out.status.success(), "sh {redirect} {path}");
        pid
    }

    fn xcat_str(&self) -> String {
        self.xcat.to_str().unwrap().to_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Collects the events of `pids` until one from `sentinel` arrives. Opens are delivered in the
/// order they happened, so once the sentinel's open is in, every earlier open is too. The timeout
/// only guards against a hang; nothing asserts on timing.
async fn until_sentinel(probes: &mut Probes, pids: &HashSet<u32>, sentinel: u32) -> Vec<OpenEvent> {
    let mut events = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), probes.next_event())
            .await
            .expect("no sentinel event within 30 s")
            .expect("reading events");
        if event.process.pid == sentinel {
            return events;
        }
        if pids.contains(&event.process.pid) {
            events.push(event);
        }
    }
}

/// A scratch directory holding a `sentinel` file, and the tracepoint probes approving `token`
/// and `sentinel` (a test reads the sentinel last, to know all earlier events have arrived).
fn watch_tokens(name: &str) -> (Scratch, PathBuf, Probes) {
    let scratch = Scratch::new(name);
    let sentinel_file = scratch.dir.join("sentinel");
    fs::write(&sentinel_file, "s").unwrap();
    let mut probes = load_tracepoint();
    probes
        .set_basenames(&names(&["token", "sentinel"]))
        .unwrap();
    (scratch, sentinel_file, probes)
}

fn load_tracepoint() -> Probes {
    let mut probes = Probes::load(Strategy::Tracepoint).expect("loading the tracepoint strategy");
    assert_eq!(probes.strategy(), Strategy::Tracepoint);
    // These tests read one file several times with one program and expect every open; the
    // repeat filter has its own test.
    probes.set_repeat_window(None).unwrap();
    probes
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn kubelet_token_reads_resolve_to_the_timestamped_file() {
    if !in_private_mount_namespace("kubelet_token_reads_resolve_to_the_timestamped_file") {
        return;
    }
    kubelet_layout();
    let (scratch, sentinel_file, mut probes) = watch_tokens("kubelet");

    let via_var_run = "/var/run/secrets/kubernetes.io/serviceaccount/token".to_owned();
    let absolute = scratch.cat(&via_var_run, None, "k8s-token");
    let relative = scratch.cat(
        "token",
        Some("/var/run/secrets/kubernetes.io/serviceaccount"),
        "k8s-token",
    );
    let dotdot = scratch.cat(
        "../../eks.amazonaws.com/serviceaccount/token",
        Some(K8S_DIR),
        "eks-token",
    );
    let ca = scratch.cat(&format!("{K8S_DIR}/ca.crt"), None, "k8s-ca");
    let unrelated = scratch.cat(
        "/etc/hostname",
        None,
        &fs::read_to_string("/etc/hostname").unwrap(),
    );
    let writer = scratch.shell_open(">>", &format!("{K8S_DIR}/{K8S_TS}/token"));
    let read_write = scratch.shell_open("<>", &format!("{EKS_DIR}/token"));
    let sentinel = scratch.cat(sentinel_file.to_str().unwrap(), None, "s");

    let pids: HashSet<u32> = [
        absolute, relative, dotdot, ca, unrelated, writer, read_write,
    ]
    .into();
    let events = runtime().block_on(until_sentinel(&mut probes, &pids, sentinel));
    for event in &events {
        println!("{event:?}");
    }
    let k8s_token = format!("{K8S_DIR}/{K8S_TS}/token");
    let eks_token = format!("{EKS_DIR}/{EKS_TS}/token");
    let by_pid =
        |pid: u32| -> Vec<&OpenEvent> { events.iter().filter(|e| e.process.pid == pid).collect() };

    let xcat = scratch.xcat_str();
    // SAFETY: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    for (pid, path, arg) in [
        (absolute, &k8s_token, via_var_run.as_str()),
        (relative, &k8s_token, "token"),
        (
            dotdot,
            &eks_token,
            "../../eks.amazonaws.com/serviceaccount/token",
        ),
    ] {
        let got = by_pid(pid);
        assert_eq!(got.len(), 1, "xcat {arg}: expected one event, got {got:?}");
        let event = got[0];
        assert_eq!(&event.path, path, "xcat {arg}");
        assert!(!event.path_truncated);
        assert_eq!(event.access, Some(Access::Read));
        assert_eq!(event.tid, pid);
        let p = &event.process;
        assert_eq!(p.pid, pid);
        assert_eq!(p.ppid, std::process::id(), "xcat's parent is this test");
        assert_eq!((p.uid, p.gid), (uid, gid));
        assert_eq!(p.comm, "xcat");
        assert_eq!(
            p.exe, xcat,
            "exe resolved in the kernel although xcat has exited"
        );
        assert_eq!(p.args, vec![xcat.clone(), arg.to_owned()]);
        assert_eq!(p.container_id, None);
    }
    assert!(
        by_pid(ca).is_empty(),
        "ca.crt is not approved: {:?}",
        by_pid(ca)
    );
    assert!(
        by_pid(unrelated).is_empty(),
        "unrelated file reported: {:?}",
        by_pid(unrelated)
    );

    let written = by_pid(writer);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].path, k8s_token);
    assert_eq!(written[0].access, Some(Access::Write));
    assert_ne!(written[0].flags & libc::O_APPEND as u32, 0);
    let rw = by_pid(read_write);
    assert_eq!(rw.len(), 1, "{rw:?}");
    assert_eq!(rw[0].path, eks_token);
    assert_eq!(rw[0].access, Some(Access::ReadWrite));
    assert_eq!(probes.lost_events(), 0);
}

/// Runs `xcat token` from `dir` (reached one component at a time, as it may be longer than
/// PATH_MAX) and returns xcat's pid.
fn cat_token_in(scratch: &Scratch, components: &[String]) -> u32 {
    let start = std::env::current_dir().unwrap();
    std::env::set_current_dir(&scratch.dir).unwrap();
    for name in components {
        fs::create_dir(name).unwrap();
        std::env::set_current_dir(name).unwrap();
    }
    fs::write("token", "deep").unwrap();
    let output = Command::new(&scratch.xcat)
        .arg("token")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = output.id();
    let output = output.wait_with_output().unwrap();
    std::env::set_current_dir(start).unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "deep");
    pid
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn paths_too_deep_or_too_long_keep_their_tail_and_are_flagged() {
    if !in_private_mount_namespace("paths_too_deep_or_too_long_keep_their_tail_and_are_flagged") {
        return;
    }
    let (scratch, sentinel_file, mut probes) = watch_tokens("long");

    // 40 levels: more walk steps than an open's path gets (32).
    let deep: Vec<String> = (0..40).map(|i| format!("d{i:02}")).collect();
    let deep_pid = cat_token_in(&scratch, &deep);
    // 24 names of 200 bytes: more than the 4096 bytes of names a path gets.
    let long: Vec<String> = (0..24)
        .map(|i| format!("{i:02}{}", "x".repeat(198)))
        .collect();
    let long_pid = cat_token_in(&scratch, &long);
    let sentinel = scratch.cat(sentinel_file.to_str().unwrap(), None, "s");

    let events = runtime().block_on(until_sentinel(
        &mut probes,
        &HashSet::from([deep_pid, long_pid]),
        sentinel,
    ));
    let by_pid = |pid: u32| -> &OpenEvent {
        let got: Vec<_> = events.iter().filter(|e| e.process.pid == pid).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        got[0]
    };
    for (pid, components) in [(deep_pid, &deep), (long_pid, &long)] {
        let event = by_pid(pid);
        let full = format!("{}/{}/token", scratch.dir.display(), components.join("/"));
        println!("{} of {} bytes", event.path.len(), full.len());
        assert!(event.path_truncated, "{event:?}");
        // The tail, relative (no leading '/'), on a component boundary.
        assert!(!event.path.starts_with('/'), "{}", event.path);
        assert!(
            full.ends_with(&format!("/{}", event.path)),
            "{}",
            event.path
        );
        assert_eq!(event.process.exe, scratch.xcat_str());
    }
    let deep_event = by_pid(deep_pid);
    assert_eq!(
        deep_event.path.split('/').count(),
        32,
        "{}",
        deep_event.path
    );
    let long_event = by_pid(long_pid);
    assert!(
        (4096 - 255..=4096 + 255).contains(&long_event.path.len()),
        "{}",
        long_event.path.len()
    );
    assert_eq!(probes.lost_events(), 0);
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn set_basenames_adds_and_removes() {
    if !in_private_mount_namespace("set_basenames_adds_and_removes") {
        return;
    }
    kubelet_layout();
    let scratch = Scratch::new("basenames");
    let sentinel_file = scratch.dir.join("sentinel");
    fs::write(&sentinel_file, "s").unwrap();
    let sentinel_path = sentinel_file.to_str().unwrap().to_owned();
    let token = format!("{K8S_DIR}/token");
    let ca = format!("{K8S_DIR}/ca.crt");
    let namespace = format!("{K8S_DIR}/namespace");
    let mut probes = load_tracepoint();
    let rt = runtime();

    // Each round: set the approvers, open the three files, then the sentinel, and compare.
    let rounds: [(&[&str], &[&str]); 4] = [
        (&["token"], &["token"]),
        (&["ca.crt", "namespace"], &["ca.crt", "namespace"]),
        (&[], &[]),
        (&["token", "namespace"], &["token", "namespace"]),
    ];
    for (approved, expected) in rounds {
        let mut set = names(approved);
        probes.set_basenames(&set).unwrap();
        assert_eq!(probes.basenames(), &set);
        let pids: HashSet<u32> = [
            scratch.cat(&token, None, "k8s-token"),
            scratch.cat(&ca, None, "k8s-ca"),
            scratch.cat(&namespace, None, "default"),
        ]
        .into();
        // The sentinel needs its own approval; adding it now cannot make earlier opens appear.
        set.insert("sentinel".into());
        probes.set_basenames(&set).unwrap();
        let sentinel = scratch.cat(&sentinel_path, None, "s");
        let events = rt.block_on(until_sentinel(&mut probes, &pids, sentinel));
        let got: BTreeSet<String> = events
            .iter()
            .map(|e| e.path.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(got, names(expected), "approved {approved:?}: {events:?}");
        assert_eq!(events.len(), expected.len(), "{events:?}");
    }

    let too_long = "x".repeat(64);
    for bad in ["", "a/b", too_long.as_str()] {
        let err = probes.set_basenames(&names(&[bad])).unwrap_err();
        assert!(err.to_string().contains("invalid basename"), "{err}");
    }
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn auto_takes_the_first_strategy_the_kernel_allows() {
    if let Some(reason) = missing_requirement() {
        unavailable("auto_takes_the_first_strategy_the_kernel_allows", &reason);
    }
    let mut allowed = None;
    for (strategy, hook) in [
        (Strategy::Lsm, "lsm/file_open"),
        (Strategy::Fentry, "fentry/security_file_open"),
    ] {
        match Probes::load(strategy) {
            Ok(probes) => {
                println!("{strategy} loads here");
                assert_eq!(probes.strategy(), strategy);
                allowed.get_or_insert(strategy);
            }
            Err(err) => {
                let message = format!("{err:#}");
                println!("{strategy} refused: {message}");
                // The error names the strategy and, when the kernel refused the program, the
                // hook; an inactive BPF LSM is reported as such.
                assert!(
                    message.starts_with(&format!("strategy {strategy}")),
                    "{message}"
                );
                assert!(
                    message.contains(hook) || message.contains("BPF LSM is not active"),
                    "{message}"
                );
            }
        }
    }
    let auto = Probes::load(Strategy::Auto).expect("auto must fall back to tracepoints");
    assert_eq!(auto.strategy(), allowed.unwrap_or(Strategy::Tracepoint));
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// hybrid hosts).
fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(left.split(' ').nth(4)?))
    })
}

/// A cgroup made for a test, removed when dropped (once its processes have exited).
struct Cgroup(PathBuf);

impl Cgroup {
    fn create(path: &Path) -> Cgroup {
        fs::create_dir(path).unwrap();
        Cgroup(path.to_owned())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn container_id_and_image_come_from_the_cgroup_and_runtime_metadata() {
    if !in_private_mount_namespace(
        "container_id_and_image_come_from_the_cgroup_and_runtime_metadata",
    ) {
        return;
    }
    let cgroup_root = cgroup2_mount()
        .unwrap_or_else(|| unavailable("container_id_and_image", "no cgroup v2 hierarchy mounted"));
    kubelet_layout();
    // A containerd-style (systemd driver) cgroup, and the task's OCI bundle under our private /run.
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed);
    let cgroup = cgroup_root.join(format!("cri-containerd-{id}.scope"));
    let _cleanup = Cgroup::create(&cgroup);
    let bundle = PathBuf::from(format!(
        "/run/containerd/io.containerd.runtime.v2.task/k8s.io/{id}"
    ));
    fs::create_dir_all(&bundle).unwrap();
    fs::write(
        bundle.join("config.json"),
        r#"{"ociVersion":"1.2.0","annotations":{"io.kubernetes.cri.image-name":"registry.example/app:1.2"}}"#,
    )
    .unwrap();

    let (scratch, sentinel_file, mut probes) = watch_tokens("container");
    // The shell moves itself into the cgroup, then becomes xcat.
    let child = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > '{}/cgroup.procs' && exec '{}' '{K8S_DIR}/token'",
            cgroup.display(),
            scratch.xcat.display()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8_lossy(&output.stdout), "k8s-token");
    let sentinel = scratch.cat(sentinel_file.to_str().unwrap(), None, "s");

    let events = runtime().block_on(until_sentinel(&mut probes, &HashSet::from([pid]), sentinel));
    println!("{events:?}");
    assert_eq!(events.len(), 1, "{events:?}");
    let p = &events[0].process;
    assert_eq!(p.comm, "xcat");
    assert_eq!(p.exe, scratch.xcat_str());
    assert_eq!(p.container_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        p.container_image.as_deref(),
        Some("registry.example/app:1.2")
    );
}

/// Builds tests/reader's `token-reader` (release) and returns its path: the io_uring test runs
/// it as the process that opens through io_uring.
fn token_reader() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("probes/ sits in the workspace");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(workspace)
        .args(["build", "--release", "-p", "picket-test-reader", "--bin"])
        .arg("token-reader")
        .status()
        .expect("running cargo to build token-reader");
    assert!(status.success(), "building token-reader failed");
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join("release/token-reader")
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn io_uring_opens_are_seen_by_the_tracepoint_strategy() {
    if !in_private_mount_namespace("io_uring_opens_are_seen_by_the_tracepoint_strategy") {
        return;
    }
    if fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() != "0") {
        unavailable(
            "io_uring_opens",
            "io_uring is disabled (kernel.io_uring_disabled)",
        );
    }
    let reader = token_reader();
    kubelet_layout();
    let (scratch, sentinel_file, mut probes) = watch_tokens("io_uring");

    // `token-reader io-uring` opens with IORING_OP_OPENAT and prints what it read.
    let child = Command::new(&reader)
        .args(["io-uring", &format!("{EKS_DIR}/token")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "token-reader io-uring failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "eks-token");
    let sentinel = scratch.cat(sentinel_file.to_str().unwrap(), None, "s");

    let events = runtime().block_on(until_sentinel(&mut probes, &HashSet::from([pid]), sentinel));
    println!("{events:?}");
    let paths: Vec<&str> = events.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        vec![format!("{EKS_DIR}/{EKS_TS}/token")],
        "{events:?}"
    );
    assert_eq!(events[0].access, Some(Access::Read));
}

/// Runs `program args...` to completion (in `cgroup`, if given) and returns its pid.
fn run_in(cgroup: Option<&Path>, program: &Path, args: &[&str]) -> u32 {
    let mut command = match cgroup {
        // The shell moves itself into the cgroup, then becomes the program.
        Some(cgroup) => {
            let mut sh = Command::new("/bin/sh");
            sh.arg("-c")
                .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
                .arg(cgroup)
                .arg(program)
                .args(args);
            sh
        }
        None => {
            let mut direct = Command::new(program);
            direct.args(args);
            direct
        }
    };
    let child = command.stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{program:?} {args:?}");
    pid
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn repeats_are_dropped_but_never_hide_another_reader() {
    if !in_private_mount_namespace("repeats_are_dropped_but_never_hide_another_reader") {
        return;
    }
    let cgroup_root = cgroup2_mount()
        .unwrap_or_else(|| unavailable("repeats_are_dropped", "no cgroup v2 hierarchy mounted"));
    let (scratch, sentinel_file, mut probes) = watch_tokens("repeats");
    // Long enough that no repeat below falls out of it on a slow machine.
    probes
        .set_repeat_window(Some(Duration::from_secs(600)))
        .unwrap();
    let token = scratch.dir.join("token");
    fs::write(&token, "t").unwrap();
    let token_str = token.to_str().unwrap();
    let ycat = scratch.dir.join("ycat");
    fs::copy(&scratch.xcat, &ycat).unwrap();
    let hard_link = scratch.dir.join("zcat");
    fs::hard_link(&scratch.xcat, &hard_link).unwrap();
    let xsh = scratch.dir.join("xsh");
    fs::copy("/bin/sh", &xsh).unwrap();
    let cgroup = cgroup_root.join(format!("picket-repeats-{}", std::process::id()));
    let _cleanup = Cgroup::create(&cgroup);
    mount("tmpfs", "tmpfs", "/run", 0);
    fs::create_dir("/run/bound").unwrap();
    mount(
        "",
        scratch.dir.to_str().unwrap(),
        "/run/bound",
        libc::MS_BIND,
    );

    let xcat = &scratch.xcat;
    let t = token_str;
    let sh = |script: &str| run_in(None, &xsh, &["-c", script]);
    let mut sent = Vec::new();
    // One process opening the file again: the second open is dropped.
    sent.push(sh(&format!(": < '{t}'; : < '{t}'")));
    let dropped = 1;
    // The same program in other processes (each may have another parent, other arguments, other
    // contents behind the path): each sent. Then other programs, the same inode by another path.
    sent.push(sh(&format!(": < '{t}'")));
    sent.push(run_in(None, xcat, &[t]));
    sent.push(run_in(None, xcat, &[t]));
    sent.push(run_in(None, &ycat, &[t]));
    sent.push(run_in(None, &hard_link, &[t]));
    // One process opening the file read-write, then from another cgroup, then by another mount:
    // each open sent.
    let other_ways = sh(&format!(
        ": < '{t}'; : <> '{t}'; echo $$ > '{}/cgroup.procs'; : <> '{t}'; : <> /run/bound/token",
        cgroup.display()
    ));
    sent.extend([other_ways; 4]);
    // Forgotten (as on a rule change) between a process's two opens: both sent. The process says
    // when its first open is done, and waits for the go.
    let (opened, go) = (scratch.dir.join("opened"), scratch.dir.join("go"));
    for fifo in [&opened, &go] {
        let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "{fifo:?}");
    }
    let forgotten = Command::new(&xsh)
        .arg("-c")
        .arg(format!(
            ": < '{t}'; echo > '{}'; read _ < '{}'; : < '{t}'",
            opened.display(),
            go.display()
        ))
        .spawn()
        .unwrap();
    fs::read(&opened).unwrap();
    probes.forget_repeats().unwrap();
    fs::write(&go, "\n").unwrap();
    let forgotten_pid = forgotten.id();
    assert!(forgotten.wait_with_output().unwrap().status.success());
    sent.extend([forgotten_pid; 2]);
    // Past the window, a repeat is sent again: the time passing is what is tested here.
    probes
        .set_repeat_window(Some(Duration::from_millis(100)))
        .unwrap();
    sent.extend([sh(&format!(": < '{t}'; sleep 0.15; : < '{t}'")); 2]);
    probes.forget_repeats().unwrap();
    let sentinel = scratch.cat(sentinel_file.to_str().unwrap(), None, "s");

    let pids: HashSet<u32> = sent.iter().copied().collect();
    let events = runtime().block_on(until_sentinel(&mut probes, &pids, sentinel));
    let got: Vec<u32> = events.iter().map(|e| e.process.pid).collect();
    assert_eq!(got, sent, "{events:#?}");
    // The exact list above proves that the repeat was the open dropped; the counter is the
    // kernel's for every process, and the other tests of this binary, running in parallel, open
    // files with watched names too (repeats of theirs count here as well).
    assert!(
        probes.repeats_dropped() >= dropped,
        "{} repeats dropped, {dropped} expected at least",
        probes.repeats_dropped(),
    );
    let exe_of = |i: usize| events[i].process.exe.as_str();
    assert_eq!(exe_of(0), xsh.to_str().unwrap());
    assert_eq!(
        (exe_of(2), exe_of(3)),
        (xcat.to_str().unwrap(), xcat.to_str().unwrap())
    );
    assert_eq!(exe_of(5), hard_link.to_str().unwrap());
    assert_eq!(events[6].access, Some(Access::Read));
    assert_eq!(events[7].access, Some(Access::ReadWrite));
    assert_eq!(events[8].access, Some(Access::ReadWrite));
    assert_eq!(events[9].path, "/run/bound/token");
}

#[test]
#[ignore = "needs root and BPF (./run-tests runs it)"]
fn files_approved_by_identity_are_reported_under_any_name() {
    if !in_private_mount_namespace("files_approved_by_identity_are_reported_under_any_name") {
        return;
    }
    kubelet_layout();
    let (scratch, sentinel_file, mut probes) = watch_tokens("identity");
    let token = format!("{K8S_DIR}/{K8S_TS}/token");
    let id = picket_probes::file_id_of(&fs::metadata(&token).unwrap());
    probes.set_identities(&BTreeSet::from([id])).unwrap();
    assert_eq!(probes.identities(), &BTreeSet::from([id]));
    // Hard links live on the token's own filesystem.
    fs::create_dir(format!("{K8S_DIR}/.cache")).unwrap();
    let link = format!("{K8S_DIR}/.cache/blob");
    fs::hard_link(&token, &link).unwrap();
    let cert = format!("{K8S_DIR}/.cache/cert");
    fs::hard_link(format!("{K8S_DIR}/{K8S_TS}/ca.crt"), &cert).unwrap();

    let by_name = scratch.cat(&format!("{K8S_DIR}/token"), None, "k8s-token");
    let by_link = scratch.cat(&link, None, "k8s-token");
    let by_cert_link = scratch.cat(&cert, None, "k8s-ca");
    let writer = scratch.shell_open(">>", &link);
    probes.set_identities(&BTreeSet::new()).unwrap();
    let after_clear = scratch.cat(&link, None, "k8s-token");
    let sentinel = scratch.cat(sentinel_file.to_str().unwrap(), None, "s");

    let pids: HashSet<u32> = [by_name, by_link, by_cert_link, writer, after_clear].into();
    let events = runtime().block_on(until_sentinel(&mut probes, &pids, sentinel));
    for event in &events {
        println!("{event:?}");
    }
    let by_pid =
        |pid: u32| -> Vec<&OpenEvent> { events.iter().filter(|e| e.process.pid == pid).collect() };
    let named = by_pid(by_name);
    assert_eq!(named.len(), 1, "{named:?}");
    assert_eq!((named[0].file, named[0].by_identity), (id, false));
    let linked = by_pid(by_link);
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0].path, link);
    assert_eq!((linked[0].file, linked[0].by_identity), (id, true));
    assert_eq!(linked[0].process.exe, scratch.xcat_str());
    let written = by_pid(writer);
    assert_eq!(written.len(), 1, "{written:?}");
    assert_eq!(written[0].access, Some(Access::Write));
    assert!(by_pid(by_cert_link).is_empty(), "ca.crt was not approved");
    assert!(
        by_pid(after_clear).is_empty(),
        "identities cleared: {:?}",
        by_pid(after_clear)
    );
}

//! The lab's scenarios. Each boots its guests, drives them through the
//! agent, and checks the outcome; the legs are compared on the host.

use std::time::{Duration, Instant};

use crate::guest::{Guest, Lab, Outcome, REGION_BYTES};

/// A scenario: runs against a fresh lab directory.
pub type Scenario = fn(&Lab) -> Outcome<()>;

/// Every scenario, by name, in the order `all` runs them, with the error
/// lines its consoles may hold (the partition's fence is one).
pub const ALL: &[(&str, Scenario, &[&str])] = &[
    ("single", single, &[]),
    ("three", three, &[]),
    ("crash", crash, &[]),
    ("iscsi", iscsi, &[]),
    // A dead target: the kernel logs its I/O errors and the failed leg.
    ("leg-fail", leg_fail, &[]),
    ("path-fail", path_fail, &[]),
    // The frozen node's kernel times out the request it sent just before
    // the freeze (its clock jumps on thaw); `partition` checks that the
    // other consoles have no time-out.
    ("partition", partition, &["lease lost: fenced", "Request timed out"]),
    ("partition-suspend", partition_suspend, &["lease lost: fenced", "Request timed out", "resetting the machine"]),
    ("disk", disk, &[]),
    // The killed daemon's kernel finds nobody for a moment: it reconnects.
    (
        "daemon-kill",
        daemon_kill,
        &["Userspace log server not found", "Attempting to contact userspace log server", "Request timed out"],
    ),
    ("speed", speed, &[]),
    ("speed-if", speed_integrated_flush, &[]),
    ("failover", failover, &[]),
];

const SECS: fn(u64) -> Duration = Duration::from_secs;
/// The default fence action, which every scenario but `partition-suspend` uses.
const REBOOT: &str = "reboot";
const ADMIN: &str = "dmlogctl --socket /data/dmlogd/admin.sock";

/// Boots nodes 1..=n with fresh data disks and waits for their agents.
fn boot(lab: &Lab, n: u32) -> Outcome<Vec<Guest>> {
    let started = Instant::now();
    let mut guests = Vec::new();
    for i in 1..=n {
        lab.data_disk(i)?;
        guests.push(Guest::start(lab, i)?);
    }
    for g in &mut guests {
        g.ready(SECS(180))?;
    }
    println!("   {n} guest(s) booted in {:.1} s", started.elapsed().as_secs_f64());
    Ok(guests)
}

/// When the leader evicts a node it has not heard from: written into
/// every guest's configuration (it is also dmlogd's default), so that the
/// crash figures can be printed beside it.
const DEAD_AFTER: Duration = Duration::from_millis(12_000);

/// The TOML configuration of node `node` in an `n`-node cluster.
fn config(node: u32, n: u32, fence: &str) -> String {
    let mut members = String::new();
    for i in 1..=n {
        members.push_str(&format!("{i} = \"192.0.2.{i}:7601\"\n"));
    }
    format!(
        "id = {node}\ndata_dir = \"/data/dmlogd\"\nlisten = \"192.0.2.{node}:7601\"\nkernel = \"netlink\"\nfence = \"{fence}\"\nmetrics = \"127.0.0.1:9100\"\n[members]\n{members}[timing]\ndead_after_ms = {}\n",
        DEAD_AFTER.as_millis()
    )
}

/// Writes node `g`'s configuration (with fence action `fence`) and starts
/// its daemon.
fn start_daemon(g: &mut Guest, n: u32, fence: &str) -> Outcome<()> {
    let script =
        format!("mkdir -p /etc\ncat > /etc/dmlogd.toml <<'TOML'\n{}TOML\nstart_dmlogd", config(g.node, n, fence));
    g.sh(&script).map(|_| ())
}

/// Starts every guest's daemon and waits until each reports itself healthy.
fn cluster_up(guests: &mut [Guest], fence: &str) -> Outcome<()> {
    let started = Instant::now();
    let n = guests.len() as u32;
    for g in guests.iter_mut() {
        start_daemon(g, n, fence)?;
    }
    for g in guests.iter_mut() {
        wait_healthy(g, SECS(120))?;
    }
    println!("   cluster of {n} healthy in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Boots node `node` of an `n`-node cluster again on its old data disk and
/// waits until its daemon is back and healthy.
fn reboot(lab: &Lab, node: u32, n: u32, fence: &str) -> Outcome<Guest> {
    let mut g = Guest::start(lab, node)?;
    g.ready(SECS(180))?;
    start_daemon(&mut g, n, fence)?;
    wait_healthy(&mut g, SECS(120))?;
    Ok(g)
}

/// Waits until `dmlogctl status` on the node exits 0.
fn wait_healthy(g: &mut Guest, limit: Duration) -> Outcome<()> {
    let script = format!(
        "n=0; while [ $n -lt {} ]; do {ADMIN} status > /tmp/status 2>&1 && exit 0; sleep 0.5; n=$((n+1)); done; cat /tmp/status; exit 1",
        limit.as_secs() * 2
    );
    g.run(&script, limit + SECS(30)).map(|_| ()).map_err(|e| format!("node {} not healthy: {e}", g.node))
}

/// The node's `dmlogctl status --json`.
fn status(g: &mut Guest) -> Outcome<serde_json::Value> {
    let text = g.sh(&format!("{ADMIN} status --json || true"))?;
    serde_json::from_str(&text).map_err(|e| format!("node {}: status --json: {e}: {text}", g.node))
}

/// A userspace-log mirror table over the shared legs (64 MiB, 512 KiB
/// regions). `before` go between the uuid and the log type
/// (`integrated_flush`), `log` is the type and its device, `after` follow
/// the region size (`nosync`); `leg1` may name another device for leg 1.
fn table(uuid: &str, before: &[&str], log: &str, after: &[&str], leg1: &str) -> String {
    table_on(uuid, before, log, after, LEG0, leg1)
}

/// `table` with both legs named.
fn table_on(uuid: &str, before: &[&str], log: &str, after: &[&str], leg0: &str, leg1: &str) -> String {
    let args: Vec<&str> = [uuid]
        .into_iter()
        .chain(before.iter().copied())
        .chain(log.split(' '))
        .chain(["1024"])
        .chain(after.iter().copied())
        .collect();
    format!("0 131072 mirror userspace {} {} 2 {leg0} 0 {leg1} 0 1 handle_errors", args.len(), args.join(" "))
}

const LEG0: &str = "$(readlink -f /dev/lab/leg0)";
const LEG1: &str = "$(readlink -f /dev/lab/leg1)";

/// `dmsetup create <name>` with the table.
fn create(g: &mut Guest, name: &str, table: &str) -> Outcome<()> {
    g.sh(&format!("dmsetup create {name} --table \"{table}\"")).map(|_| ())
}

/// Waits until the mirror reports every region in sync on the node.
fn wait_in_sync(g: &mut Guest, name: &str, secs: u64) -> Outcome<()> {
    g.run(&format!("wait_in_sync {name} {secs}"), SECS(secs + 30)).map(|_| ())
}

/// Starts `loops` background writers of `count` writes each on the node;
/// `writers_done` waits for them.
fn start_writers(g: &mut Guest, dev: &str, count: u32, loops: u32) -> Outcome<()> {
    let node = g.node;
    let mut s = String::from("rm -f /tmp/w*.rc\n");
    for l in 0..loops {
        s.push_str(&format!(
            "(WRITES_DONE=/tmp/w{l}.n writes {dev} {node} {count}; echo $? > /tmp/w{l}.rc) > /tmp/w{l}.log 2>&1 &\n"
        ));
    }
    g.sh(&s).map(|_| ())
}

/// Waits for the node's writers; fails if any write failed.
fn writers_done(g: &mut Guest, loops: u32, secs: u64) -> Outcome<()> {
    let s = format!(
        "n=0; while [ $n -lt {t} ]; do k=0; for l in $(seq 0 {last}); do [ -e /tmp/w$l.rc ] && k=$((k+1)); done; [ $k = {loops} ] && break; sleep 0.5; n=$((n+1)); done\n\
         for l in $(seq 0 {last}); do [ \"$(cat /tmp/w$l.rc 2>/dev/null)\" = 0 ] || {{ echo \"writer $l: $(cat /tmp/w$l.rc 2>/dev/null || echo unfinished)\"; cat /tmp/w$l.log; exit 1; }}; done",
        t = secs * 2,
        last = loops - 1
    );
    g.run(&s, SECS(secs + 30)).map(|_| ())
}

/// Stops the guests (ending qemu: the images are what is compared).
fn stop(guests: Vec<Guest>) {
    drop(guests);
}

/// One node: a `clustered-core` mirror, full resync, writes, status,
/// suspend/resume, removal; the same with `integrated_flush`.
fn single(lab: &Lab) -> Outcome<()> {
    let mut guests = boot(lab, 1)?;
    cluster_up(&mut guests, REBOOT)?;
    let g = &mut guests[0];
    for (label, uuid, before) in
        [("plain", "lab-single", &[][..]), ("integrated_flush", "lab-single-if", &["integrated_flush"][..])]
    {
        let started = Instant::now();
        create(g, "m", &table(uuid, before, "clustered-core", &[], LEG1))?;
        wait_in_sync(g, "m", 180)?;
        println!("   {label}: created and fully resynced in {:.1} s", started.elapsed().as_secs_f64());
        g.run("writes /dev/mapper/m 1 150 && writes /dev/mapper/m 2 150 && writes /dev/mapper/m 3 150", SECS(300))?;
        let st = g.sh("dmsetup status m")?;
        if !st.contains("clustered-core") || !st.contains("128/128") {
            return Err(format!("{label}: unexpected status after writes: {st}"));
        }
        let t = g.sh("dmsetup table m")?;
        if !t.contains(uuid) || (!before.is_empty() && !t.contains("integrated_flush")) {
            return Err(format!("{label}: unexpected table: {t}"));
        }
        g.sh("dmsetup suspend m && dmsetup resume m && writes /dev/mapper/m 1 50")?;
        wait_in_sync(g, "m", 60)?;
        let log = g.sh(&format!("{ADMIN} log {uuid}"))?;
        if !log.contains(uuid) {
            return Err(format!("{label}: dmlogctl log does not show the log: {log}"));
        }
        g.sh("dmsetup remove m")?;
        println!("   {label}: writes, status, suspend/resume, remove: ok");
        lab.legs_identical()?;
    }
    stop(guests);
    lab.legs_identical()
}

/// Boots a three-node cluster with mirror `m` (log `uuid`) active on all
/// three and fully in sync. `leg1_of` gives each node's leg-1 device.
fn three_with_mirror(lab: &Lab, uuid: &str, log: &str, leg1_of: fn(u32) -> String, fence: &str) -> Outcome<Vec<Guest>> {
    let mut guests = boot(lab, 3)?;
    cluster_up(&mut guests, fence)?;
    mirror_on_all(&mut guests, &|n| table(uuid, &[], log, &[], &leg1_of(n)), 60)?;
    Ok(guests)
}

/// Creates mirror `m` on every guest (node n's table is `table_of(n)`):
/// node 1 first, which resyncs it fully; then the others, each waited for
/// up to `secs`.
fn mirror_on_all(guests: &mut [Guest], table_of: &dyn Fn(u32) -> String, secs: u64) -> Outcome<()> {
    let started = Instant::now();
    for g in guests.iter_mut() {
        create(g, "m", &table_of(g.node))?;
        if g.node == 1 {
            wait_in_sync(g, "m", 300)?;
            println!("   node 1: mirror created and fully resynced in {:.1} s", started.elapsed().as_secs_f64());
        }
    }
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", secs)?;
    }
    println!("   mirror active on {} nodes and in sync in {:.1} s", guests.len(), started.elapsed().as_secs_f64());
    Ok(())
}

fn plain_leg1(_: u32) -> String {
    LEG1.to_owned()
}

/// Three nodes writing concurrently to shared regions (never to the same
/// block); all report in sync and the legs are identical.
fn three(lab: &Lab) -> Outcome<()> {
    let mut guests = three_with_mirror(lab, "lab-three", "clustered-core", plain_leg1, REBOOT)?;
    let started = Instant::now();
    for g in guests.iter_mut() {
        start_writers(g, "/dev/mapper/m", 150, 2)?;
    }
    for g in guests.iter_mut() {
        writers_done(g, 2, 600)?;
    }
    println!("   900 concurrent O_DIRECT writes from 3 nodes in {:.1} s", started.elapsed().as_secs_f64());
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 60)?;
        let s = g.sh("in_sync m")?;
        println!("   node {}: {s} regions in sync", g.node);
    }
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    stop(guests);
    lab.legs_identical()
}

/// Where a scenario's mirror legs live.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Storage {
    /// The lab's shared virtio disks, attached to every guest.
    Shared,
    /// iSCSI LUNs: storage guest 4 exports `leg0` and guest 5 `leg1` with
    /// the kernel's LIO target; the cluster's guests log in with
    /// open-iscsi (`iscsi_export`, `iscsi_login` in `guest/lab.sh`).
    Iscsi,
}

/// The storage guests: node number and the disk each exports.
const TARGETS: [(u32, &str); 2] = [(4, "leg0"), (5, "leg1")];

impl Storage {
    /// The storage guests with their targets, and three cluster guests
    /// attached to the legs with a healthy cluster (reboot fence) on them.
    fn cluster(self, lab: &Lab) -> Outcome<(Vec<Guest>, Vec<Guest>)> {
        let targets = self.boot(lab)?;
        let mut guests = boot(lab, 3)?;
        for g in guests.iter_mut() {
            self.attach(g)?;
        }
        cluster_up(&mut guests, REBOOT)?;
        Ok((targets, guests))
    }

    /// Boots the storage guests and starts their targets (none for `Shared`).
    fn boot(self, lab: &Lab) -> Outcome<Vec<Guest>> {
        if self == Storage::Shared {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let mut targets = Vec::new();
        for (n, _) in TARGETS {
            lab.data_disk(n)?;
            targets.push(Guest::start(lab, n)?);
        }
        for (g, (n, disk)) in targets.iter_mut().zip(TARGETS) {
            g.ready(SECS(180))?;
            g.sh(&format!("iscsi_export {disk} 192.0.2.{n}"))?;
        }
        println!("   iSCSI targets up (node 4: leg0, node 5: leg1) in {:.1} s", started.elapsed().as_secs_f64());
        Ok(targets)
    }

    /// Makes the legs visible on a cluster guest: logs in to both targets.
    fn attach(self, g: &mut Guest) -> Outcome<()> {
        match self {
            Storage::Shared => Ok(()),
            Storage::Iscsi => g.run("iscsi_login 192.0.2.4 192.0.2.5", SECS(120)).map(|_| ()),
        }
    }

    /// How the figures name it.
    fn label(self) -> &'static str {
        match self {
            Storage::Shared => "shared virtio",
            Storage::Iscsi => "iSCSI",
        }
    }

    /// The legs' devices, as the guest's shell expands them.
    fn legs(self) -> (&'static str, &'static str) {
        match self {
            Storage::Shared => (LEG0, LEG1),
            Storage::Iscsi => ("$(readlink -f /dev/lab/ileg0)", "$(readlink -f /dev/lab/ileg1)"),
        }
    }
}

/// Creates node 3's slow leg 1 (writes 300 ms late), so that its crash
/// leaves regions written on one leg only, over the storage's leg 1.
fn make_slow_leg1(g: &mut Guest, storage: Storage) -> Outcome<()> {
    let leg1 = storage.legs().1;
    g.sh(&format!("dmsetup create slow1 --table \"0 131072 delay {leg1} 0 0 {leg1} 0 300\"")).map(|_| ())
}

/// The crash scenarios' mirror table on node `n` (node 3's leg 1 slow).
fn crash_table(storage: Storage, n: u32) -> String {
    let (leg0, leg1) = storage.legs();
    let leg1 = if n == 3 { "/dev/mapper/slow1" } else { leg1 };
    table_on("lab-crash", &[], "clustered-core", &[], leg0, leg1)
}

/// How long the survivors' steady writers run in each crash round, and
/// how far into that node 3 dies.
const CRASH_WRITE_SECS: u64 = 40;
const CRASH_AFTER: Duration = Duration::from_secs(8);
/// How often the survivors sample their mirror's sync count and node 3's
/// membership during a crash round.
const SAMPLE: Duration = Duration::from_millis(250);

/// A node crash (qemu killed) mid-write, twice: node 3 dies first as a
/// follower, then, rebooted and rejoined, as the leader. Each time the
/// survivors evict it, resync the regions it left half written and keep
/// writing; their steady writers give the longest write stall around the
/// crash, and their samples the time until every region is in sync again
/// (printed beside `dead_after`). The legs end identical.
fn crash(lab: &Lab) -> Outcome<()> {
    crash_on(lab, Storage::Shared)
}

/// `crash` with the mirror's legs on iSCSI LUNs of two storage guests.
fn iscsi(lab: &Lab) -> Outcome<()> {
    crash_on(lab, Storage::Iscsi)
}

fn crash_on(lab: &Lab, storage: Storage) -> Outcome<()> {
    let (_targets, mut guests) = storage.cluster(lab)?;
    make_slow_leg1(&mut guests[2], storage)?;
    mirror_on_all(&mut guests, &|n| crash_table(storage, n), 120)?;
    let mut figures = Vec::new();
    for (round, leads) in [(1, false), (2, true)] {
        lead(&mut guests, leads)?;
        figures.push(crash_round(lab, &mut guests, storage, round, leads)?);
    }
    guests[2].run("writes /dev/mapper/m 3 30", SECS(300))?;
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 120)?;
    }
    println!("   node 3 wrote again; all in sync");
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    stop(guests);
    lab.legs_identical()?;
    for f in figures {
        println!("   {f}");
    }
    Ok(())
}

/// Makes node 3 the leader (`leads`) or not, moving the leadership with
/// `dmlogctl leader transfer` on the leader when needed, and waits until
/// every node agrees.
fn lead(guests: &mut [Guest], leads: bool) -> Outcome<()> {
    let mut said = Vec::new();
    for _ in 0..5 {
        let leaders: Vec<Option<u64>> =
            guests.iter_mut().map(|g| status(g).map(|s| s["leader"].as_u64())).collect::<Outcome<_>>()?;
        let agreed = leaders.iter().all(|l| *l == leaders[0]);
        let Some(leader) = leaders[0].filter(|_| agreed) else {
            std::thread::sleep(SECS(1));
            continue;
        };
        if (leader == 3) == leads {
            return Ok(());
        }
        let want = if leads { 3 } else { 1 };
        let g = guests.iter_mut().find(|g| u64::from(g.node) == leader).ok_or("no guest for the leader")?;
        // The answer may be a refusal that a moment later is not.
        let answer = g.sh(&format!("{ADMIN} leader transfer {want} 2>&1 || true"))?;
        said.push(format!("leaders {leaders:?}: {}", answer.trim()));
        std::thread::sleep(SECS(3));
    }
    Err(format!("node 3 did not {}become the leader: {}", if leads { "" } else { "stop to " }, said.join("; ")))
}

/// One round of `crash`: returns its figures as one line.
fn crash_round(lab: &Lab, guests: &mut [Guest], storage: Storage, round: usize, leads: bool) -> Outcome<String> {
    let role = if leads { "the leader" } else { "a follower" };
    // Survivors: a steady writer (their own third of the blocks) and a
    // sampler of the sync count and of node 3's kernel in the membership
    // ("joined" is the last word of "not joined": evicted).
    for g in guests[..2].iter_mut() {
        let slot = g.node - 1;
        g.sh(&format!(
            "rm -f /tmp/lw.rc /tmp/sync.stop /tmp/crash_at\n\
             (lab-writer /dev/mapper/m rand 4096 {CRASH_WRITE_SECS} {slot} 3 > /tmp/lw.out 2>&1; echo $? > /tmp/lw.rc) &\n\
             (while [ ! -e /tmp/sync.stop ]; do echo \"$(cut -d' ' -f1 /proc/uptime) $(in_sync m) $({ADMIN} status 2> /dev/null | awk '$1 == 3 {{print $NF}}')\"; sleep {}; done > /tmp/sync.log 2>&1) &",
            SAMPLE.as_secs_f64()
        ))?;
    }
    start_writers(&mut guests[2], "/dev/mapper/m", 100_000, 6)?;
    std::thread::sleep(CRASH_AFTER);
    let progress = guests[2].sh("cat /tmp/w*.n 2>/dev/null | awk '{s += $1} END {print s + 0}'; cat /tmp/w*.log")?;
    guests[2].kill();
    for g in guests[..2].iter_mut() {
        g.sh("cut -d' ' -f1 /proc/uptime > /tmp/crash_at")?;
    }
    let diff = lab.differing_regions()?;
    println!(
        "   round {round}: node 3 ({role}) killed after {} writes; {} regions differ between the legs right after",
        progress.trim(),
        diff.len()
    );
    let mut stalls = Vec::new();
    for g in guests[..2].iter_mut() {
        let out = g.run(
            "n=0; while [ ! -e /tmp/lw.rc ] && [ $n -lt 1200 ]; do sleep 0.5; n=$((n+1)); done; cat /tmp/lw.rc /tmp/lw.out",
            SECS(CRASH_WRITE_SECS + 660),
        )?;
        if out.split_whitespace().next() != Some("0") {
            return Err(format!("node {}: the writer failed or did not finish: {out}", g.node));
        }
        let field = |name: &str| writer_field(&out, name).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
        println!(
            "   survivor node {}: {} writes, p50 {:.1} ms, longest {:.0} ms starting {:.1} s into the run (crash at ~{} s)",
            g.node,
            field("writes"),
            field("p50_ms"),
            field("max_ms"),
            field("max_at_s"),
            CRASH_AFTER.as_secs()
        );
        stalls.push(field("max_ms") / 1000.0);
    }
    for g in guests[..2].iter_mut() {
        wait_in_sync(g, "m", 180)?;
    }
    // The samples: when node 3 was evicted, and when the last region was
    // seen out of sync, both from the crash.
    let (mut evicted, mut restored) = (f64::INFINITY, 0.0_f64);
    for g in guests[..2].iter_mut() {
        let out = g.sh("touch /tmp/sync.stop; sleep 1; cat /tmp/crash_at /tmp/sync.log")?;
        let mut lines = out.lines();
        let crash_at: f64 = lines.next().and_then(|l| l.trim().parse().ok()).ok_or(format!("crash_at: {out}"))?;
        for l in lines {
            let w: Vec<&str> = l.split_whitespace().collect();
            let Some(t) = w.first().and_then(|t| t.parse::<f64>().ok()) else { continue };
            if t < crash_at {
                continue;
            }
            if w.get(2) == Some(&"joined") {
                evicted = evicted.min(t - crash_at);
            }
            if let Some((a, b)) = w.get(1).and_then(|s| s.split_once('/'))
                && a != b
            {
                restored = restored.max(t - crash_at + SAMPLE.as_secs_f64());
            }
        }
    }
    if !evicted.is_finite() {
        return Err(format!("round {round}: no survivor saw node 3 evicted"));
    }
    let restored = restored.max(evicted);
    let line = format!(
        "crash of {role} ({} legs): survivors' longest write {:.2} s; node 3 evicted {evicted:.1} s and every region in sync {restored:.1} s after the crash (dead_after {:.0} s)",
        storage.label(),
        stalls.iter().copied().fold(0.0, f64::max),
        DEAD_AFTER.as_secs_f64()
    );
    println!("   {line}");
    check_eviction(guests, round)?;
    lab.legs_identical()?;
    println!("   legs identical after the survivors' resync");

    // Node 3 reboots (same data disk), rejoins, and mirrors again.
    let mut g3 = reboot(lab, 3, 3, REBOOT)?;
    storage.attach(&mut g3)?;
    make_slow_leg1(&mut g3, storage)?;
    create(&mut g3, "m", &crash_table(storage, 3))?;
    guests[2] = g3;
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 120)?;
    }
    println!("   node 3 rebooted and rejoined; all in sync");
    Ok(line)
}

/// After `round` crashes of node 3: node 1 sees it evicted, the survivors
/// logged `round` evictions, and their kernels were prompted (kicked or
/// woken) at least `round` times: node 3 died holding marks, and those
/// became resync work. Each survivor's metrics count at least what its
/// log says it did.
fn check_eviction(guests: &mut [Guest], round: usize) -> Outcome<()> {
    let st = status(&mut guests[0])?;
    let evicted = st["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == 3))
        .is_some_and(|m| m["incarnation"].is_null());
    if !evicted {
        return Err(format!("node 3 is not evicted in node 1's view: {st}"));
    }
    let mut logged = 0;
    let mut prompted = 0.0;
    for g in guests[..2].iter_mut() {
        let console = std::fs::read_to_string(&g.console).unwrap_or_default();
        logged += console.matches("evicted a node whose lease ran out node=3").count();
        let metrics = g.sh("wget -qO- http://127.0.0.1:9100/metrics")?;
        for (counter, line) in [("kicks", "kicked the kernel"), ("wakes", "woke the kernel")] {
            let counted = metric_sum(&metrics, &format!("dmlogd_{counter}_total"));
            let said = console.matches(line).count() as f64;
            if counted < said {
                return Err(format!("node {}: {counter}_total is {counted}, its log says {said}", g.node));
            }
            prompted += counted;
        }
    }
    if logged < round {
        return Err(format!("the survivors logged {logged} evictions of node 3 in {round} rounds"));
    }
    if prompted < round as f64 {
        return Err(format!("the survivors prompted their kernels {prompted} times in {round} rounds"));
    }
    Ok(())
}

/// How long every node writes in `leg-fail`, and when leg 1's target dies.
const LEG_FAIL_WRITE_SECS: u64 = 45;
const LEG_FAIL_AFTER: Duration = Duration::from_secs(5);
/// The blocks (4 KiB) the `leg-fail` and `path-fail` writers keep to: the
/// mirror's first quarter, 32 of its 128 regions.
const LEG_FAIL_SPAN: u64 = 16384 / 4;

/// Starts a steady writer on every node (random 4 KiB within the first
/// `span` blocks, its own third of them), recording the last stamp of
/// each block in `/tmp/lw.rec`.
fn start_recorded_writers(guests: &mut [Guest], secs: u64, span: u64) -> Outcome<()> {
    for g in guests.iter_mut() {
        g.sh(&format!(
            "rm -f /tmp/lw.rc /tmp/lw.rec; (lab-writer --record /tmp/lw.rec --span {span} /dev/mapper/m rand 4096 {secs} {} 3 > /tmp/lw.out 2>&1; echo $? > /tmp/lw.rc) &",
            g.node - 1
        ))?;
    }
    Ok(())
}

/// Waits for every node's recorded writer; fails if one failed.
fn recorded_writers_done(guests: &mut [Guest], secs: u64) -> Outcome<()> {
    for g in guests.iter_mut() {
        // Stuck: what the mirror, the log and the writer's kernel stack say.
        let out = g.run(
            &format!(
                "n=0; while [ ! -e /tmp/lw.rc ] && [ $n -lt {} ]; do sleep 0.5; n=$((n+1)); done
                 if [ ! -e /tmp/lw.rc ]; then echo 'writer stuck'; dmsetup status m; {ADMIN} log lab-leg;                  wget -qO- http://127.0.0.1:9100/metrics | grep -E '^dmlogd_request_seconds_count';                  for p in $(pidof lab-writer); do cat /proc/$p/stack; done; exit 1; fi
                 cat /tmp/lw.rc /tmp/lw.out",
                (secs + 120) * 2
            ),
            SECS(secs + 240),
        )?;
        if out.split_whitespace().next() != Some("0") {
            return Err(format!("node {}: the writer failed or did not finish: {out}", g.node));
        }
        println!("   node {}: {}", g.node, out.lines().nth(1).unwrap_or("").trim());
    }
    Ok(())
}

/// Every node reads back, through its mirror, every block any node's
/// recorded writer wrote, and finds the stamp last written there.
fn check_reads(guests: &mut [Guest], when: &str) -> Outcome<()> {
    let mut records = Vec::new();
    for g in guests.iter_mut() {
        records.push((g.node, g.sh("cat /tmp/lw.rec")?));
    }
    for g in guests.iter_mut() {
        let mut script = String::new();
        for (n, text) in &records {
            if *n != g.node {
                script.push_str(&format!("cat > /tmp/lw{n}.rec <<'REC'\n{text}\nREC\n"));
            }
        }
        let files: Vec<String> = records
            .iter()
            .map(|(n, _)| if *n == g.node { "/tmp/lw.rec".into() } else { format!("/tmp/lw{n}.rec") })
            .collect();
        script.push_str(&format!("lab-writer check /dev/mapper/m 4096 {}", files.join(" ")));
        let out = g.run(&script, SECS(300)).map_err(|e| format!("{when}: {e}"))?;
        println!("   node {} {when}: {}", g.node, out.trim());
    }
    Ok(())
}

/// The regions `dmlogctl log` shows out of sync (`x`) or recovering (`R`)
/// in its region map (one region per character for the lab's 128).
fn out_of_sync_regions(g: &mut Guest, uuid: &str) -> Outcome<Vec<u64>> {
    let text = g.sh(&format!("{ADMIN} log {uuid} --json"))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("log --json: {e}: {text}"))?;
    if v["regions_per_char"].as_u64().unwrap_or(1) > 1 {
        return Err(format!("the region map packs several regions per character: {text}"));
    }
    let map: String = v["region_map"].as_str().unwrap_or("").chars().filter(|c| !c.is_whitespace()).collect();
    Ok(map.chars().enumerate().filter(|(_, c)| matches!(c, 'x' | 'R')).map(|(i, _)| i as u64).collect())
}

/// A storage target dies while every node writes. Each node's kernel
/// fails leg 1 (`dmsetup status` health `AD`), marks the regions whose
/// write failed out of sync (SET_REGION_SYNC(r, 0), cluster-wide) and,
/// with `handle_errors`, holds the write. As LVM's repair would, every
/// node then reloads the mirror without `handle_errors` (`suspend
/// --noflush` requeues the held writes into the new table), and I/O
/// continues: writes to out-of-sync regions go to leg 0 only, a recovery
/// towards the dead leg fails once per region and is not retried until
/// the next resume (dmlogd keeps such regions writable). When the target
/// is back (the initiators log in again by themselves) the out-of-sync
/// regions must be exactly those whose legs differ; every node reads back
/// every block any node wrote and finds its last stamp; every node then
/// reloads the mirror with `handle_errors`, the resume resyncs those
/// regions, the reads are checked again and the legs end identical.
fn leg_fail(lab: &Lab) -> Outcome<()> {
    let storage = Storage::Iscsi;
    let (mut targets, mut guests) = storage.cluster(lab)?;
    let (leg0, leg1) = storage.legs();
    let handled = table_on("lab-leg", &[], "clustered-core", &[], leg0, leg1);
    let unhandled = handled.replace(" 1 handle_errors", " 0");
    mirror_on_all(&mut guests, &|_| handled.clone(), 120)?;
    // The writers keep to the first quarter of the mirror (32 of its 128
    // regions): the regions they never write must stay in sync.
    start_recorded_writers(&mut guests, LEG_FAIL_WRITE_SECS, LEG_FAIL_SPAN)?;
    std::thread::sleep(LEG_FAIL_AFTER);
    targets[1].kill();
    let died = Instant::now();
    println!("   leg 1's target (node 5) killed {} s into the writes", LEG_FAIL_AFTER.as_secs());
    for g in guests.iter_mut() {
        g.run(
            "n=0; until dmsetup status m | grep -q ' AD '; do [ $n -lt 900 ] || { dmsetup status m; exit 1; }; sleep 0.1; n=$((n+1)); done",
            SECS(120),
        )
        .map_err(|e| format!("leg 1 never failed: {e}"))?;
        println!("   node {}: leg 1 failed {:.1} s after its target died", g.node, died.elapsed().as_secs_f64());
    }
    for g in guests.iter_mut() {
        g.sh(&format!("dmsetup suspend --noflush m && dmsetup reload m --table \"{unhandled}\" && dmsetup resume m"))?;
    }
    println!(
        "   every node reloaded without handle_errors {:.1} s after the target died",
        died.elapsed().as_secs_f64()
    );
    recorded_writers_done(&mut guests, LEG_FAIL_WRITE_SECS)?;
    let status_now = guests[0].sh("dmsetup status m")?;
    let oos = out_of_sync_regions(&mut guests[0], "lab-leg")?;
    let diff = lab.differing_regions()?;
    println!(
        "   writers done; {} regions out of sync in the log, {} differ between the legs; node 1: {status_now}",
        oos.len(),
        diff.len()
    );
    let written = LEG_FAIL_SPAN * 4096 / REGION_BYTES;
    if oos.is_empty() || oos != diff || oos.iter().any(|r| *r >= written) {
        return Err(format!(
            "out of sync in the log {oos:?}, differing on the legs {diff:?} (written: regions below {written})"
        ));
    }
    check_reads(&mut guests, "degraded")?;

    // The target returns; the initiators log in again by themselves.
    let mut back = Guest::start(lab, 5)?;
    back.ready(SECS(180))?;
    back.sh("iscsi_export leg1 192.0.2.5")?;
    targets[1] = back;
    for g in guests.iter_mut() {
        g.run(
            "n=0; until dd if=/dev/lab/ileg1 of=/dev/null bs=4096 count=1 iflag=direct 2> /dev/null; do [ $n -lt 600 ] || exit 1; sleep 0.2; n=$((n+1)); done",
            SECS(180),
        )
        .map_err(|e| format!("leg 1 did not come back: {e}"))?;
    }
    println!("   target back; every node reaches leg 1 again {:.1} s after it died", died.elapsed().as_secs_f64());
    check_reads(&mut guests, "leg back, before the reload")?;
    let reloaded = Instant::now();
    for g in guests.iter_mut() {
        g.sh(&format!("dmsetup suspend m && dmsetup reload m --table \"{handled}\" && dmsetup resume m"))?;
    }
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 300)?;
    }
    println!(
        "   reloaded with handle_errors; every node in sync {:.1} s later ({} regions resynced)",
        reloaded.elapsed().as_secs_f64(),
        oos.len()
    );
    check_reads(&mut guests, "resynced")?;
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    stop(guests);
    drop(targets);
    lab.legs_identical()
}

/// `path-fail`: how long the writers run in each phase.
const PATH_FAIL_WRITE_SECS: u64 = 30;
const PATH_FAIL_AFTER: Duration = Duration::from_secs(5);

/// Only node 1 loses its path to leg 1 (its packets to the target go to a
/// gateway that does not exist); nodes 2 and 3 keep both legs. Node 1's
/// kernel fails leg 1, marks the regions it wrote out of sync
/// (cluster-wide) and holds those writes (`handle_errors`). No answer of
/// the log can make the other kernels read the leg that holds node 1's
/// newest data (docs/architecture.md, "A leg lost by one node"), so the
/// safe response, the one docs/operations.md gives, is taken: node 1's
/// mirror table is replaced by one that fails all I/O (`dmsetup
/// wipe_table`), which fails its held writes (never acknowledged: its
/// writer sees an I/O error), stops its writes until the path returns and
/// closes its log, so its marks no longer keep the others from copying.
/// (A plain suspend is not enough: the suspended kernel's region hash
/// outlives the suspend, so its marks stay and nobody copies the regions
/// it left out of sync; the first run of this scenario waited for that
/// resync in vain.) The other nodes' kernels, which cached "all in sync",
/// are suspended and resumed in turn so that they ask for resync work
/// again (the second run waited in vain without it); they resync what
/// node 1 left out of sync and keep writing; while they write, they read
/// back every block node 1's writes acknowledged and find its last stamp. When the path returns node
/// 1 loads the mirror table again; all reach sync, every node reads back
/// every acknowledged block of every node, and the legs end identical.
fn path_fail(lab: &Lab) -> Outcome<()> {
    let storage = Storage::Iscsi;
    let (_targets, mut guests) = storage.cluster(lab)?;
    let (leg0, leg1) = storage.legs();
    let handled = table_on("lab-path", &[], "clustered-core", &[], leg0, leg1);
    mirror_on_all(&mut guests, &|_| handled.clone(), 120)?;
    let span = LEG_FAIL_SPAN;
    start_recorded_writers(&mut guests, PATH_FAIL_WRITE_SECS, span)?;
    std::thread::sleep(PATH_FAIL_AFTER);
    guests[0].sh("ip route add 192.0.2.5/32 via 192.0.2.99 dev eth0")?;
    let cut = Instant::now();
    println!("   node 1's path to leg 1 (node 5) cut {} s into the writes", PATH_FAIL_AFTER.as_secs());
    guests[0]
        .run(
            "n=0; until dmsetup status m | grep -q ' AD '; do [ $n -lt 900 ] || { dmsetup status m; exit 1; }; sleep 0.1; n=$((n+1)); done",
            SECS(120),
        )
        .map_err(|e| format!("node 1 never failed leg 1: {e}"))?;
    let seen = guests[1].sh("in_sync m")?;
    println!(
        "   node 1's kernel failed leg 1 {:.1} s after the cut; node 2 then saw {seen} in sync",
        cut.elapsed().as_secs_f64()
    );
    // The safe response: node 1 stops writing; its held writes fail.
    guests[0].sh("dmsetup wipe_table m")?;
    let out = guests[0].run(
        "n=0; while [ ! -e /tmp/lw.rc ] && [ $n -lt 120 ]; do sleep 0.5; n=$((n+1)); done; cat /tmp/lw.rc /tmp/lw.out",
        SECS(120),
    )?;
    if out.split_whitespace().next() == Some("0") || !out.contains("Input/output error") {
        return Err(format!("node 1's writer should have failed with an I/O error: {out}"));
    }
    println!("   node 1 wiped its mirror table; its held write failed: {}", out.lines().last().unwrap_or("").trim());
    // The other kernels cached "all in sync" and ask for resync work
    // again only once resumed: each is suspended and resumed in turn.
    for g in guests[1..].iter_mut() {
        g.sh("dmsetup suspend m && dmsetup resume m")?;
    }
    recorded_writers_done(&mut guests[1..], PATH_FAIL_WRITE_SECS)?;
    for g in guests[1..].iter_mut() {
        wait_in_sync(g, "m", 180)?;
    }
    println!(
        "   nodes 2 and 3 resynced what node 1 left out of sync {:.1} s after the cut",
        cut.elapsed().as_secs_f64()
    );
    // Nodes 2 and 3 write their own blocks again (keeping the regions in
    // their kernels' region hashes) while they read node 1's.
    let record1 = guests[0].sh("cat /tmp/lw.rec")?;
    start_recorded_writers(&mut guests[1..], PATH_FAIL_WRITE_SECS, span)?;
    for g in guests[1..].iter_mut() {
        let out = g.run(
            &format!("cat > /tmp/lw1.rec <<'REC'\n{record1}\nREC\nlab-writer check /dev/mapper/m 4096 /tmp/lw1.rec"),
            SECS(300),
        )?;
        println!("   node {} reads node 1's blocks while it writes: {}", g.node, out.trim());
    }
    recorded_writers_done(&mut guests[1..], PATH_FAIL_WRITE_SECS)?;

    // The path returns; node 1 loads the mirror again.
    guests[0].sh("ip route del 192.0.2.5/32")?;
    guests[0].run(
        "n=0; until dd if=/dev/lab/ileg1 of=/dev/null bs=4096 count=1 iflag=direct 2> /dev/null; do [ $n -lt 600 ] || exit 1; sleep 0.2; n=$((n+1)); done",
        SECS(180),
    )?;
    guests[0].sh(&format!("dmsetup reload m --table \"{handled}\" && dmsetup resume m"))?;
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 300)?;
    }
    println!("   path back, node 1 reloaded; all in sync {:.1} s after the cut", cut.elapsed().as_secs_f64());
    check_reads(&mut guests, "at the end")?;
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    stop(guests);
    lab.legs_identical()
}

/// The sum of a Prometheus counter's samples (every label set).
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |a, b| a + b)
}

/// The leader's guest frozen (SIGSTOP) past `dead_after`: a new leader
/// serves, the frozen node is evicted; thawed, it fences (reset), reboots
/// and rejoins; the legs never diverge.
fn partition(lab: &Lab) -> Outcome<()> {
    partition_with(lab, REBOOT)
}

/// `partition` with the `suspend` fence action: the thawed node's
/// `dmsetup suspend` cannot finish (its mirror waits for answers the
/// fenced daemon does not give), so after `fence_action_max_ms` it resets
/// the machine as `reboot` does; the rest is `partition`.
fn partition_suspend(lab: &Lab) -> Outcome<()> {
    partition_with(lab, "suspend")
}

/// The suspend limit of the lab's (default) timing, `fence_action_max_ms`.
const SUSPEND_LIMIT: Duration = Duration::from_millis(2_000);

fn partition_with(lab: &Lab, fence: &str) -> Outcome<()> {
    let mut guests = three_with_mirror(lab, "lab-partition", "clustered-core", plain_leg1, fence)?;
    let leader = status(&mut guests[0])?["leader"].as_u64().ok_or("no leader")? as usize;
    let other = if leader == 1 { 1 } else { 0 };
    for g in guests.iter_mut() {
        start_writers(g, "/dev/mapper/m", 200, 1)?;
    }
    std::thread::sleep(SECS(2));
    guests[leader - 1].signal("STOP")?;
    println!("   leader (node {leader}) frozen");
    let frozen_at = Instant::now();
    let mut new_leader = None;
    while frozen_at.elapsed() < SECS(60) {
        let st = status(&mut guests[other])?;
        let l = st["leader"].as_u64();
        let evicted = st["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == leader as u64))
            .is_some_and(|m| m["incarnation"].is_null());
        if l.is_some_and(|l| l != leader as u64) && evicted {
            new_leader = l;
            break;
        }
        std::thread::sleep(SECS(1));
    }
    let new_leader = new_leader.ok_or("no new leader evicted the frozen one within 60 s")?;
    println!(
        "   node {new_leader} leads and node {leader} is evicted {:.1} s after the freeze",
        frozen_at.elapsed().as_secs_f64()
    );
    guests[leader - 1].signal("CONT")?;
    let thawed_at = Instant::now();
    // Its lease ran out while it was frozen: it fences (`reboot` resets the
    // machine; `suspend` tries and resets when that does not finish)
    // before it can write again.
    guests[leader - 1].wait_exit(SECS(60))?;
    let reset_after = thawed_at.elapsed();
    let console = std::fs::read_to_string(&guests[leader - 1].console).unwrap_or_default();
    if !console.contains("fenced") {
        return Err(format!("node {leader} reset without logging its fence"));
    }
    if fence != REBOOT {
        if reset_after < SUSPEND_LIMIT {
            return Err(format!(
                "node {leader} reset {reset_after:?} after the thaw, before its suspend could time out"
            ));
        }
        if !console.contains("the suspend did not finish: resetting the machine") {
            return Err(format!("node {leader} reset without logging that its suspend did not finish"));
        }
    }
    println!("   node {leader} thawed, fenced itself ({fence}) and reset {:.1} s later", reset_after.as_secs_f64());
    for (i, g) in guests.iter_mut().enumerate() {
        if i + 1 != leader {
            writers_done(g, 1, 600)?;
        }
    }
    let mut back = reboot(lab, leader as u32, 3, fence)?;
    create(&mut back, "m", &table("lab-partition", &[], "clustered-core", &[], LEG1))?;
    back.run(&format!("writes /dev/mapper/m {leader} 100"), SECS(300))?;
    guests[leader - 1] = back;
    println!("   node {leader} rebooted, rejoined and wrote {:.1} s after the thaw", thawed_at.elapsed().as_secs_f64());
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 120)?;
    }
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    for g in &guests {
        let console = std::fs::read_to_string(&g.console).unwrap_or_default();
        if g.node != leader as u32
            && let Some(l) = console.lines().find(|l| l.contains("Request timed out"))
        {
            return Err(format!("node {} (not frozen) stalled: {l}", g.node));
        }
    }
    stop(guests);
    lab.legs_identical()
}

/// The clean bitmap of the shared log device: (magic ok, nr_regions, the
/// dirty regions among the first 128).
fn disk_log_state(lab: &Lab) -> Outcome<(bool, u64, Vec<u64>)> {
    let img = lab.read_image("log")?;
    let magic = img.get(0..4) == Some(&[0x72, 0x52, 0x69, 0x4d][..]);
    let nr = img.get(8..16).map_or(0, |b| b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)));
    let dirty =
        (0..128u64).filter(|&r| img.get(1024 + (r / 8) as usize).is_none_or(|b| b & (1 << (r % 8)) == 0)).collect();
    Ok((magic, nr, dirty))
}

/// `clustered-disk` on the shared log disk: all guests stop abruptly
/// mid-write; after a restart only the regions dirty at the crash are
/// resynced.
fn disk(lab: &Lab) -> Outcome<()> {
    let log = "clustered-disk $LOGDEV";
    let mut guests = three_with_mirror(lab, "lab-disk", log, plain_leg1, REBOOT)?;
    let (magic, nr, dirty) = disk_log_state(lab)?;
    if !magic || nr != 128 || !dirty.is_empty() {
        return Err(format!("after the initial resync: magic ok {magic}, nr_regions {nr}, dirty {dirty:?}"));
    }
    println!("   on-disk log: MiRr, 128 regions, all clean");
    for g in guests.iter_mut() {
        start_writers(g, "/dev/mapper/m", 100_000, 2)?;
    }
    std::thread::sleep(SECS(5));
    for g in guests.iter_mut() {
        g.kill();
    }
    let (magic, nr, dirty) = disk_log_state(lab)?;
    println!("   all guests killed; on the log device {} regions dirty: {dirty:?}", dirty.len());
    if !magic || nr != 128 || dirty.is_empty() || dirty.len() == 128 {
        return Err(format!("after the crash: magic ok {magic}, nr_regions {nr}, {} regions dirty", dirty.len()));
    }
    drop(guests);
    let mut guests = Vec::new();
    for i in 1..=3 {
        guests.push(Guest::start(lab, i)?);
    }
    for g in guests.iter_mut() {
        g.ready(SECS(180))?;
    }
    for g in guests.iter_mut() {
        start_daemon(g, 3, REBOOT)?;
    }
    for g in guests.iter_mut() {
        wait_healthy(g, SECS(120))?;
    }
    let first = {
        let g = &mut guests[0];
        g.sh(&format!("dmsetup create m --table \"{}\" && in_sync m", table("lab-disk", &[], log, &[], LEG1)))?
    };
    let in_sync_at_start: u64 =
        first.trim().split('/').next().and_then(|s| s.parse().ok()).ok_or(format!("in_sync: {first}"))?;
    println!("   restarted: {first} in sync at the first resume");
    if in_sync_at_start < 128 - dirty.len() as u64 {
        return Err(format!(
            "only {in_sync_at_start} regions in sync at the first resume, but only {} were dirty on the device: a full resync",
            dirty.len()
        ));
    }
    for g in guests[1..].iter_mut() {
        create(g, "m", &table("lab-disk", &[], log, &[], LEG1))?;
    }
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 120)?;
    }
    let (_, _, dirty_after) = disk_log_state(lab)?;
    println!("   all in sync again; {} regions dirty on the device", dirty_after.len());
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    stop(guests);
    lab.legs_identical()
}

/// One timed run of `lab-writer` in the guest: writes per second and MiB/s.
fn write_run(g: &mut Guest, dev: &str, pattern: &str, block: u64, seconds: u64) -> Outcome<(f64, f64)> {
    let out = g.run(&format!("lab-writer {dev} {pattern} {block} {seconds}"), SECS(seconds + 600))?;
    let field = |name: &str| -> Option<f64> { writer_field(&out, name)?.parse().ok() };
    let (Some(writes), Some(bytes), Some(secs)) = (field("writes"), field("bytes"), field("seconds")) else {
        return Err(format!("lab-writer on node {}: {out}", g.node));
    };
    let secs = secs.max(0.001);
    Ok((writes / secs, bytes / secs / 1024.0 / 1024.0))
}

/// The value after `name` in `lab-writer`'s "name value name value ..." line.
fn writer_field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    let mut words = out.split_whitespace();
    words.position(|w| w == name)?;
    words.next()
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The shell command creating mirror `c` on the lab's legs with the
/// kernel's own `core` log (1024-sector regions) and `options`.
fn create_core(options: &[&str]) -> String {
    format!(
        "dmsetup create c --table \"0 131072 mirror core {} 1024 {} 2 $(readlink -f /dev/lab/leg0) 0 $(readlink -f /dev/lab/leg1) 0 1 handle_errors\"",
        options.len() + 1,
        options.join(" ")
    )
}

/// The commit the lab's binaries were built from (for the CSV).
fn commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".into(), |o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// Writes per run, per pattern and log; `SPEED_SECONDS` overrides.
const SPEED_SECONDS: u64 = 6;
/// Runs of each log, interleaved (clustered, core, clustered, ...).
const SPEED_RUNS: usize = 3;

/// The 3-node `clustered-core` log against the kernel's own `core` log on
/// the same legs, in the same guests and run: one writer at a time, on the
/// leader and on a follower; sequential 4 KiB, random-offset 4 KiB over the
/// whole device, sequential 1 MiB; each measured in `SPEED_RUNS` runs of
/// `SPEED_SECONDS` interleaved with the `core` log's. Prints medians and
/// ratios; every run goes to `<image dir>/speed.csv`.
fn speed(lab: &Lab) -> Outcome<()> {
    speed_with(lab, &[])
}

/// [`speed`] with the clustered table's `integrated_flush` option: the
/// kernel sends its marks inside the FLUSH and delays the FLUSH after
/// CLEARs (three requests per 4 KiB write instead of five).
fn speed_integrated_flush(lab: &Lab) -> Outcome<()> {
    speed_with(lab, &["integrated_flush"])
}

/// [`speed`] with these options before the clustered log's type.
fn speed_with(lab: &Lab, options: &[&str]) -> Outcome<()> {
    let seconds = std::env::var("SPEED_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(SPEED_SECONDS);
    let mut guests = boot(lab, 3)?;
    cluster_up(&mut guests, REBOOT)?;
    for g in guests.iter_mut() {
        create(g, "m", &table("lab-speed", options, "clustered-core", &["nosync"], LEG1))?;
    }
    let leader = status(&mut guests[0])?["leader"].as_u64().ok_or("no leader")? as usize;
    let follower = if leader == 1 { 2 } else { 1 };
    let core = create_core(&["nosync"]);
    let patterns = [("seq-4k", "seq", 4096), ("rand-4k", "rand", 4096), ("seq-1M", "seq", 1 << 20)];
    let (commit, when) =
        (commit(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    let mut csv = String::new();
    println!(
        "   {seconds} s per run, {SPEED_RUNS} runs of each log interleaved; medians; clustered table options {options:?}"
    );
    for (role, node) in [("leader", leader), ("follower", follower)] {
        let g = &mut guests[node - 1];
        g.sh(&core)?;
        for (name, pattern, block) in patterns {
            let (mut cl, mut co) = (Vec::new(), Vec::new());
            for run in 1..=SPEED_RUNS {
                for (log, dev, into) in
                    [("clustered-core", "/dev/mapper/m", &mut cl), ("core", "/dev/mapper/c", &mut co)]
                {
                    let (iops, mibs) = write_run(g, dev, pattern, block, seconds)?;
                    let log = if log == "core" || options.is_empty() {
                        log.to_owned()
                    } else {
                        format!("{log}+{}", options.join("+"))
                    };
                    csv.push_str(&format!("{when},{commit},{role},{name},{run},{log},{iops:.1},{mibs:.3}\n"));
                    into.push((iops, mibs));
                }
            }
            let (mut cl_iops, mut cl_mib): (Vec<f64>, Vec<f64>) = cl.into_iter().unzip();
            let (mut co_iops, mut co_mib): (Vec<f64>, Vec<f64>) = co.into_iter().unzip();
            let (a, b) = (median(&mut cl_mib), median(&mut co_mib));
            println!(
                "   writer on the {role:<8} {name:<8} clustered-core {a:>8.2} MiB/s ({:>7.0} writes/s), core {b:>8.2} MiB/s ({:>7.0}/s), ratio {:.3}",
                median(&mut cl_iops),
                median(&mut co_iops),
                a / b
            );
        }
        g.sh("dmsetup remove c")?;
    }
    println!("   (cmirrord in the same kind of lab: ratio 0.020 at 4k, 0.10 at 1M)");
    let path = lab.image.join("speed.csv");
    let fresh = !path.exists();
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| e.to_string())?;
    if fresh {
        csv.insert_str(0, "unix_time,commit,writer,pattern,run,log,writes_per_s,mib_per_s\n");
    }
    std::io::Write::write_all(&mut out, csv.as_bytes()).map_err(|e| e.to_string())?;
    println!("   runs appended to {}", path.display());
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    stop(guests);
    Ok(())
}

/// `kill -9` of one node's daemon alone (its kernel stays up) while that
/// node copies a region of the initial resync; the daemon is started
/// again at once, while every node writes. It must start (nothing of the old process may hold the
/// lock or the connector socket: a thread stuck in a read of the mirror
/// did), the kernel reconnects, the node resumes its part of the resync,
/// every node ends in sync and the legs are identical.
fn daemon_kill(lab: &Lab) -> Outcome<()> {
    let mut guests = boot(lab, 3)?;
    cluster_up(&mut guests, REBOOT)?;
    // Node 2's copies are slow (its leg 1 writes 300 ms late), so it holds
    // a region for a while.
    guests[1].sh(&format!("dmsetup create slow1 --table \"0 131072 delay {LEG1} 0 0 {LEG1} 0 300\""))?;
    let uuid = "lab-dkill";
    for g in guests.iter_mut() {
        let leg1 = if g.node == 2 { "/dev/mapper/slow1".to_owned() } else { LEG1.to_owned() };
        create(g, "m", &table(uuid, &[], "clustered-core", &[], &leg1))?;
    }
    // Until node 2 holds a region of the resync.
    let script = format!(
        "n=0; while [ $n -lt 600 ]; do {ADMIN} log {uuid} --json 2>/dev/null | tr -d ' \\n' | grep -q '\"node\":2,[^}}]*\"recovering\":[0-9]' && exit 0; sleep 0.1; n=$((n+1)); done; exit 1"
    );
    guests[1].run(&script, SECS(90)).map_err(|e| format!("node 2 never held a region to resync: {e}"))?;
    let before = guests[1].sh("in_sync m")?;
    // Every node writes meanwhile, node 2 with writes in flight at the kill.
    for g in guests.iter_mut() {
        start_writers(g, "/dev/mapper/m", 40, 1)?;
    }
    let killed = Instant::now();
    // kill -9 of the daemon alone (not its wake-read children: the unit's
    // KillMode=process), then, once its process is gone (systemd waits
    // for that too), a new one. The guest's busybox has no pkill. The
    // killed daemon's admin socket stays behind: removed, so that
    // start_dmlogd waits for the new daemon's.
    // A killed process lingers as a zombie until its parent (the control
    // shell) reaps it: gone means no /proc entry or state Z.
    let kill = "(d=; for p in $(pidof dmlogd); do tr '\\0' ' ' < /proc/$p/cmdline | grep -q wake-read || d=$p; done; \
                [ -n \"$d\" ] || { echo 'no daemon to kill'; exit 1; }; kill -9 $d; n=0; \
                alive() { s=$(cut -d' ' -f3 /proc/$d/stat 2>/dev/null); [ -n \"$s\" ] && [ \"$s\" != Z ]; }; \
                while alive && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done; \
                alive && { echo \"pid $d still there 10 s after kill -9\"; exit 1; }; \
                echo \"gone after $n\"; rm -f /data/dmlogd/admin.sock; start_dmlogd && echo started)";
    let out = guests[1].run(kill, SECS(60))?;
    if !out.contains("started") {
        return Err(format!("the daemon did not start again after kill -9: {out}"));
    }
    println!(
        "   node 2's daemon killed while resyncing ({before} in sync); a new one is up {:.1} s later",
        killed.elapsed().as_secs_f64()
    );
    let stuck = guests[1].sh("for p in /proc/[0-9]*; do s=$(cat $p/stat 2>/dev/null); case \"$s\" in *'(dmlogd) D'*) echo ${p#/proc/};; esac; done")?;
    if !stuck.trim().is_empty() {
        println!("   note: dmlogd process(es) in D state: {}", stuck.trim());
    }
    wait_healthy(&mut guests[1], SECS(120))?;
    for g in guests.iter_mut() {
        writers_done(g, 1, 300)?;
    }
    println!("   120 writes from 3 nodes done {:.1} s after the kill", killed.elapsed().as_secs_f64());
    for g in guests.iter_mut() {
        wait_in_sync(g, "m", 300)?;
    }
    println!("   every node in sync {:.1} s after the kill", killed.elapsed().as_secs_f64());
    let console = std::fs::read_to_string(&guests[1].console).unwrap_or_default();
    if console.contains("another dmlogd holds") {
        return Err("the restarted daemon found the killed one's lock still held".into());
    }
    let reconnected = console.contains("Reconnected to userspace log server");
    println!("   node 2's kernel reconnected: {reconnected}");
    for g in guests.iter_mut() {
        g.sh("dmsetup remove m")?;
    }
    guests[1].sh("dmsetup remove slow1")?;
    stop(guests);
    lab.legs_identical()
}

/// The mirror's initial resync on node 1 alone, `core` log then
/// `clustered-core` (3 nodes up), timed in the guest: seconds each.
fn initial_resync(g: &mut Guest) -> Outcome<(f64, f64)> {
    let timed = |g: &mut Guest, create: &str, name: &str| -> Outcome<f64> {
        let out = g.run(
            &format!(
                "t0=$(cut -d' ' -f1 /proc/uptime); {create} || exit 1; wait_in_sync {name} 900 || exit 1; t1=$(cut -d' ' -f1 /proc/uptime); echo $t0 $t1"
            ),
            SECS(960),
        )?;
        let t: Vec<f64> = out.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        match t[..] {
            [.., t0, t1] => Ok(t1 - t0),
            _ => Err(format!("resync timing: {out}")),
        }
    };
    let core = timed(g, &create_core(&[]), "c")?;
    g.sh("dmsetup remove c")?;
    let clustered = timed(
        g,
        &format!("dmsetup create m --table \"{}\"", table("lab-failover", &[], "clustered-core", &[], LEG1)),
        "m",
    )?;
    Ok((core, clustered))
}

/// How long the writers run in `failover`, and when the leader dies.
const FAILOVER_WRITE_SECS: u64 = 30;
const FAILOVER_CRASH_AFTER: Duration = Duration::from_secs(8);

/// Measures the two failover costs of the write path. First the initial
/// resync of the 64 MiB mirror, `core` log against `clustered-core`. Then
/// the leader crashes (qemu killed) while both other nodes write 4 KiB
/// blocks sequentially: each survivor's longest single write is its stall.
/// Checks that both writers finished without an error, the survivors are
/// in sync, and the legs are identical.
fn failover(lab: &Lab) -> Outcome<()> {
    let mut guests = boot(lab, 3)?;
    cluster_up(&mut guests, REBOOT)?;
    let (core, clustered) = initial_resync(&mut guests[0])?;
    println!(
        "   initial resync of the 64 MiB mirror on node 1: core {core:.2} s, clustered-core {clustered:.2} s ({:.1}x)",
        clustered / core.max(0.001)
    );
    let metrics = guests[0].sh("wget -qO- http://127.0.0.1:9100/metrics")?;
    println!("   node 1's requests during the resync: {}", request_summary(&metrics));
    for g in guests[1..].iter_mut() {
        create(g, "m", &table("lab-failover", &[], "clustered-core", &[], LEG1))?;
        wait_in_sync(g, "m", 120)?;
    }
    let leader = status(&mut guests[0])?["leader"].as_u64().ok_or("no leader")? as usize;
    let writers: Vec<usize> = (1..=3).filter(|n| *n != leader).collect();
    for &n in &writers {
        guests[n - 1].sh(&format!(
            "rm -f /tmp/lw.rc; (lab-writer /dev/mapper/m seq 4096 {FAILOVER_WRITE_SECS} {} 3 > /tmp/lw.out 2>&1; echo $? > /tmp/lw.rc) &",
            n - 1
        ))?;
    }
    std::thread::sleep(FAILOVER_CRASH_AFTER);
    guests[leader - 1].kill();
    println!("   leader node {leader} killed {} s into the writes", FAILOVER_CRASH_AFTER.as_secs());
    for &n in &writers {
        let g = &mut guests[n - 1];
        let out = g.run(
            "n=0; while [ ! -e /tmp/lw.rc ] && [ $n -lt 1200 ]; do sleep 0.5; n=$((n+1)); done; cat /tmp/lw.rc /tmp/lw.out",
            SECS(FAILOVER_WRITE_SECS + 660),
        )?;
        let words: Vec<&str> = out.split_whitespace().collect();
        if words.first() != Some(&"0") {
            return Err(format!("node {n}: the writer failed or did not finish: {out}"));
        }
        let field = |name: &str| writer_field(&out, name);
        println!(
            "   survivor node {n}: {} writes; per write p50 {} ms, p99 {} ms; longest {} ms, started at {} s",
            field("writes").unwrap_or("?"),
            field("p50_ms").unwrap_or("?"),
            field("p99_ms").unwrap_or("?"),
            field("max_ms").unwrap_or("?"),
            field("max_at_s").unwrap_or("?"),
        );
    }
    for &n in &writers {
        wait_in_sync(&mut guests[n - 1], "m", 120)?;
    }
    for &n in &writers {
        guests[n - 1].sh("dmsetup remove m")?;
    }
    stop(guests);
    lab.legs_identical()
}

/// "TYPE count×mean ms, ..." of every request type the node answered, from
/// its `dmlogd_request_seconds` histogram.
fn request_summary(metrics: &str) -> String {
    let mut out = Vec::new();
    for l in metrics.lines() {
        let Some(rest) = l.strip_prefix("dmlogd_request_seconds_count{request=\"") else { continue };
        let Some((name, value)) = rest.split_once("\"}") else { continue };
        let count: f64 = value.trim().parse().unwrap_or(0.0);
        let sum = metric_sum(metrics, &format!("dmlogd_request_seconds_sum{{request=\"{name}\"}}"));
        if count > 0.0 {
            out.push(format!("{name} {count}x{:.1} ms", sum / count * 1000.0));
        }
    }
    out.join(", ")
}

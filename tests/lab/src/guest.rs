//! One qemu guest of the lab and the agent in its `/init`.
//!
//! A guest is a qemu process (TCG) booting the lab's kernel and initramfs
//! with the shared disks (`leg0`, `leg1`, `log`), its own data disk, a NIC
//! on the lab's loopback multicast hub, and a virtio-serial port whose two
//! host-side FIFOs carry the agent protocol described in `guest/init`.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// What a lab step returns: `Err` carries a one-paragraph explanation.
pub type Outcome<T> = Result<T, String>;

/// Where a lab run keeps its files, and what every guest shares.
#[derive(Clone, Debug)]
pub struct Lab {
    /// The run's directory: disk images, FIFOs, consoles.
    pub dir: PathBuf,
    /// `vmlinuz` and `initrd.gz`.
    pub image: PathBuf,
    /// The multicast port of this run's private network.
    pub mcast_port: u16,
}

/// Size of each data leg: 64 MiB.
pub const LEG_BYTES: u64 = 64 << 20;
/// Region size used by every scenario: 1024 sectors (512 KiB).
pub const REGION_BYTES: u64 = 512 << 10;

impl Lab {
    /// Creates fresh shared disks (zeroed legs and log) in `dir`.
    pub fn new(dir: &Path, image: &Path, mcast_port: u16) -> Outcome<Lab> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let lab = Lab { dir: dir.to_owned(), image: image.to_owned(), mcast_port };
        for (name, size) in [("leg0", LEG_BYTES), ("leg1", LEG_BYTES), ("log", 4 << 20)] {
            lab.blank(name, size)?;
        }
        Ok(lab)
    }

    fn blank(&self, name: &str, size: u64) -> Outcome<PathBuf> {
        let p = self.dir.join(format!("{name}.img"));
        let _ = std::fs::remove_file(&p);
        let f = File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        f.set_len(size).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }

    /// Creates node `n`'s private data disk (ext4, empty).
    pub fn data_disk(&self, n: u32) -> Outcome<()> {
        let p = self.blank(&format!("data{n}"), 256 << 20)?;
        run_host("mkfs.ext4", &["-q", "-F", "-L", "data", &p.to_string_lossy()])
    }

    /// Reads a shared image (for comparing the legs on the host).
    pub fn read_image(&self, name: &str) -> Outcome<Vec<u8>> {
        let p = self.dir.join(format!("{name}.img"));
        std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))
    }

    /// The regions whose bytes differ between the two legs.
    pub fn differing_regions(&self) -> Outcome<Vec<u64>> {
        let a = self.read_image("leg0")?;
        let b = self.read_image("leg1")?;
        let r = REGION_BYTES as usize;
        Ok(a.chunks(r).zip(b.chunks(r)).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i as u64).collect())
    }

    /// Asserts the legs are byte-for-byte identical and that something was
    /// written to them.
    pub fn legs_identical(&self) -> Outcome<()> {
        let diff = self.differing_regions()?;
        if !diff.is_empty() {
            return Err(format!("the legs differ in {} regions: {:?}", diff.len(), &diff[..diff.len().min(20)]));
        }
        let a = self.read_image("leg0")?;
        if a.iter().all(|&b| b == 0) {
            return Err("the legs are identical but nothing was written to them".into());
        }
        Ok(())
    }
}

/// Runs a host program, failing with its output.
pub fn run_host(program: &str, args: &[&str]) -> Outcome<()> {
    let out = Command::new(program).args(args).output().map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A running (or stopped) guest.
pub struct Guest {
    /// Its node number (1, 2, 3): the last byte of its address 192.0.2.n.
    pub node: u32,
    child: Option<Child>,
    to_guest: Option<File>,
    from_guest: Option<Receiver<String>>,
    next_job: u64,
    /// Its serial console (kernel messages and dmlogd's log).
    pub console: PathBuf,
}

impl Guest {
    /// Starts node `n`'s qemu (its data disk must exist); `ready` waits
    /// for the agent.
    pub fn start(lab: &Lab, n: u32) -> Outcome<Guest> {
        let d = &lab.dir;
        let ctl = d.join(format!("ctl{n}"));
        for end in ["in", "out"] {
            let p = ctl.with_extension(end);
            let _ = std::fs::remove_file(&p);
            run_host("mkfifo", &[&p.to_string_lossy()])?;
        }
        let console = d.join(format!("console{n}.log"));
        let img = |name: &str| d.join(format!("{name}.img")).to_string_lossy().into_owned();
        let mut args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-m".into(),
            "512".into(),
            "-smp".into(),
            "1".into(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-kernel".into(),
            lab.image.join("vmlinuz").to_string_lossy().into_owned(),
            "-initrd".into(),
            lab.image.join("initrd.gz").to_string_lossy().into_owned(),
            "-append".into(),
            format!("console=ttyS0 panic=-1 lab.node={n}"),
            "-chardev".into(),
            format!("file,id=con,path={},append=on", console.display()),
            "-serial".into(),
            "chardev:con".into(),
        ];
        for shared in ["leg0", "leg1", "log"] {
            args.push("-drive".into());
            args.push(format!("file={},if=none,id={shared},format=raw,cache=none,file.locking=off", img(shared)));
            args.push("-device".into());
            args.push(format!("virtio-blk-pci,drive={shared},share-rw=on,serial={shared}"));
        }
        args.push("-drive".into());
        args.push(format!("file={},if=none,id=data,format=raw,cache=none", img(&format!("data{n}"))));
        args.push("-device".into());
        args.push("virtio-blk-pci,drive=data,serial=data".into());
        args.push("-netdev".into());
        args.push(format!("socket,id=n0,mcast=230.0.0.1:{},localaddr=127.0.0.1", lab.mcast_port));
        args.push("-device".into());
        args.push(format!("virtio-net-pci,netdev=n0,mac=52:54:00:00:00:{n:02x}"));
        args.push("-device".into());
        args.push("virtio-serial-pci".into());
        args.push("-chardev".into());
        args.push(format!("pipe,id=ctl,path={}", ctl.display()));
        args.push("-device".into());
        args.push("virtserialport,chardev=ctl,name=ctl".into());

        let child = Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(d.join(format!("qemu{n}.err"))).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("qemu-system-x86_64: {e}"))?;
        // qemu opens both FIFOs read-write. The writing end is opened
        // read-write here too, so that the open never blocks (even when qemu
        // fails to start); the reading end is opened in its own thread.
        let (tx, rx) = channel();
        let out_path = ctl.with_extension("out");
        std::thread::spawn(move || {
            let Ok(f) = File::open(&out_path) else { return };
            let mut r = BufReader::new(f);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned();
                        if tx.send(s).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let to_guest = OpenOptions::new()
            .read(true)
            .write(true)
            .open(ctl.with_extension("in"))
            .map_err(|e| format!("ctl{n}.in: {e}"))?;
        Ok(Guest { node: n, child: Some(child), to_guest: Some(to_guest), from_guest: Some(rx), next_job: 1, console })
    }

    /// Waits for the agent's `@@READY`.
    pub fn ready(&mut self, limit: Duration) -> Outcome<()> {
        let deadline = Instant::now() + limit;
        let rx = self.from_guest.as_ref().ok_or("guest is not running")?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) if l.starts_with("@@READY") => return Ok(()),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "node {} did not boot within {limit:?} (see {})",
                        self.node,
                        self.console.display()
                    ));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "node {}'s qemu exited while booting (see {})",
                        self.node,
                        self.console.display()
                    ));
                }
            }
        }
    }

    /// Runs a shell script in the guest (with `guest/lab.sh` sourced) and
    /// returns its output; a non-zero exit status or a timeout is an error.
    pub fn run(&mut self, script: &str, limit: Duration) -> Outcome<String> {
        let id = self.next_job;
        self.next_job += 1;
        let node = self.node;
        let to = self.to_guest.as_mut().ok_or("guest is not running")?;
        let frame = format!("@@RUN {id}\n{script}\n@@END {id}\n");
        to.write_all(frame.as_bytes()).and_then(|()| to.flush()).map_err(|e| format!("node {node}: {e}"))?;
        let rx = self.from_guest.as_ref().ok_or("guest is not running")?;
        let deadline = Instant::now() + limit;
        let mut out: Vec<String> = Vec::new();
        let done = format!("@@DONE {id} ");
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rc) = l.strip_prefix(&done) {
                        while out.last().is_some_and(|l| l.is_empty()) {
                            out.pop();
                        }
                        let text = out.join("\n");
                        return if rc.trim() == "0" {
                            Ok(text)
                        } else {
                            Err(format!("node {node}: script failed (exit {rc}):\n{script}\n--- output:\n{text}"))
                        };
                    }
                    if !l.starts_with("@@DONE ") {
                        out.push(l);
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "node {node}: script did not finish within {limit:?}:\n{script}\n--- output so far:\n{}",
                        out.join("\n")
                    ));
                }
            }
        }
    }

    /// `run` with a 60 s limit.
    pub fn sh(&mut self, script: &str) -> Outcome<String> {
        self.run(script, Duration::from_secs(60))
    }

    /// The qemu process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills qemu at once (the guest's crash) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.to_guest = None;
        self.from_guest = None;
    }

    /// Waits for qemu to exit by itself (the guest rebooted: qemu runs
    /// with `-no-reboot`).
    pub fn wait_exit(&mut self, limit: Duration) -> Outcome<()> {
        let deadline = Instant::now() + limit;
        let node = self.node;
        let child = self.child.as_mut().ok_or("guest is not running")?;
        while Instant::now() < deadline {
            if child.try_wait().map_err(|e| format!("node {node}: {e}"))?.is_some() {
                self.kill();
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(format!("node {node} did not reset within {limit:?} (see {})", self.console.display()))
    }

    /// Sends a signal to qemu (`STOP` freezes the guest, `CONT` thaws it).
    pub fn signal(&self, sig: &str) -> Outcome<()> {
        let pid = self.pid().ok_or("guest is not running")?;
        run_host("kill", &[&format!("-{sig}"), &pid.to_string()])
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
    }
}

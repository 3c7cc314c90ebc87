//! A real etcd server for tests: random free ports, a temporary data directory (on
//! tmpfs when there is one, so fsync is cheap), killed and removed on drop.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Client TLS material for an etcd started in TLS mode.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

/// A running etcd.
#[derive(Debug)]
pub struct Etcd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<EtcdTls>,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0 always works on a test machine")
}

fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let mut b = tempfile::Builder::new();
    b.prefix("tern-etcd-");
    Ok(if shm.is_dir() {
        b.tempdir_in(shm)?
    } else {
        b.tempdir()?
    })
}

impl Etcd {
    /// Start a plaintext etcd on loopback and wait until it serves.
    pub fn start() -> anyhow::Result<Etcd> {
        Self::start_inner(None)
    }

    /// Start an etcd that serves clients over TLS and requires client certificates.
    pub fn start_tls(tls: EtcdTls) -> anyhow::Result<Etcd> {
        Self::start_inner(Some(tls))
    }

    fn start_inner(tls: Option<EtcdTls>) -> anyhow::Result<Etcd> {
        let mut e = Etcd {
            child: None,
            dir: temp_dir().context("creating the etcd data directory")?,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
        };
        e.spawn()?;
        Ok(e)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The client URL, e.g. `http://127.0.0.1:23790`.
    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }

    /// The endpoint without the scheme, as some clients want it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        cmd.arg("--name=tern-test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=tern-test={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(self.dir.path().join("etcd.log"))
                    .context("creating etcd.log")?,
            ));
        if let Some(t) = &self.tls {
            cmd.arg(format!("--trusted-ca-file={}", t.ca.display()))
                .arg(format!("--cert-file={}", t.server_cert.display()))
                .arg(format!("--key-file={}", t.server_key.display()))
                .arg("--client-cert-auth=true");
        }
        let child = cmd.spawn().context(
            "starting etcd (is the etcd-server package installed? the README's test command installs it)",
        )?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                let log =
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
                bail!("etcd exited during start ({status}): {log}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_ok() {
                // The port accepts before the server is ready to serve; a moment more.
                std::thread::sleep(Duration::from_millis(100));
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd did not start listening on {} within 20s",
                    self.endpoint()
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Stop etcd (SIGKILL), keeping its data and ports.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start etcd again on the same ports with the same data.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }

    /// The etcd process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// A plaintext client (for tests that inspect or tamper with the store).
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        if self.tls.is_some() {
            bail!("this etcd requires TLS; build a client with its certificates");
        }
        Ok(etcd_client::Client::connect([self.endpoint()], None).await?)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One member of an [`EtcdCluster`].
#[derive(Debug)]
struct Member {
    name: String,
    child: Option<Child>,
    client_port: u16,
    peer_port: u16,
}

/// A static etcd cluster on loopback (free ports, data on tmpfs), for failover tests:
/// members can be killed with SIGKILL and started again on their data. Removed on drop.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    members: Vec<Member>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Start `n` members and wait until they have elected a leader.
    pub fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                child: None,
                client_port: free_port(),
                peer_port: free_port(),
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            dir: temp_dir().context("creating the etcd data directory")?,
            members,
            initial_cluster,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_listening(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let m = &self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let data = self.dir.path().join(&m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .context("creating the member's log")?;
        let child = Command::new("etcd")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster={}", self.initial_cluster))
            .arg("--initial-cluster-state=new")
            .arg("--initial-cluster-token=tern-test")
            .arg("--logger=zap")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting an etcd member")?;
        self.members[i].child = Some(child);
        Ok(())
    }

    fn wait_listening(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let port = self.members[i].client_port;
        loop {
            if let Some(child) = self.members[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                bail!("etcd member {i} exited during start ({status})");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("etcd member {i} did not listen within 20s");
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Kill a member with SIGKILL (its data stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stop a member with SIGSTOP: it keeps its connections open but answers nothing
    /// (so an answer is lost with the request in flight) until [`EtcdCluster::thaw`].
    pub fn freeze(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "STOP")
    }

    /// Let a frozen member run again (SIGCONT).
    pub fn thaw(&mut self, i: usize) -> anyhow::Result<()> {
        self.signal(i, "CONT")
    }

    fn signal(&mut self, i: usize, sig: &str) -> anyhow::Result<()> {
        let pid = self.members[i]
            .child
            .as_ref()
            .map(Child::id)
            .with_context(|| format!("etcd member {i} is not running"))?;
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()?
            .success();
        if !ok {
            bail!("kill -{sig} {pid} failed");
        }
        Ok(())
    }

    /// Start a killed member again on its data and ports.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_listening(i)
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i]
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The index of the current leader, asked of the running members through the
    /// maintenance Status API; waits up to `timeout` for one to be elected.
    pub async fn leader(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            let mut leader = 0u64;
            for i in 0..self.members.len() {
                if !self.is_running(i) {
                    ids.push(0);
                    continue;
                }
                let st = async {
                    let mut c = etcd_client::Client::connect(
                        [self.endpoint(i)],
                        Some(
                            etcd_client::ConnectOptions::new()
                                .with_connect_timeout(Duration::from_millis(500))
                                .with_timeout(Duration::from_millis(500)),
                        ),
                    )
                    .await?;
                    c.status().await
                }
                .await;
                match st {
                    Ok(s) => {
                        ids.push(s.header().map_or(0, |h| h.member_id()));
                        if s.leader() != 0 {
                            leader = s.leader();
                        }
                    }
                    Err(_) => ids.push(0),
                }
            }
            if leader != 0
                && let Some(i) = ids.iter().position(|id| *id == leader)
            {
                return Ok(i);
            }
            if Instant::now() > deadline {
                bail!("no etcd leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client of every member (etcd-client's own balancing), for tests that inspect.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect(self.endpoints(), None).await?)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

//! A throw-away PostgreSQL for tests: `INTENTD_TEST_PG_URL` when set, else a fresh cluster made
//! with the machine's PostgreSQL binaries (`initdb`, `pg_ctl`) in a temp folder on a free port,
//! stopped and removed on drop.
//!
//! initdb refuses to run as root, so as root the cluster belongs to the `postgres` user (the
//! Debian package creates it) and lives in a folder that user owns. Without the binaries the
//! fixture panics with what to install: under CI these tests must run, never skip.
//!
//! [`TestPg::start_tls`] makes a cluster with `ssl = on` serving a certificate of a [`TestCa`]
//! made on the fly with the `openssl` CLI (`.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TestPg {
    /// `postgres://...` of a database only this fixture uses.
    pub url: String,
    cluster: Option<Cluster>,
}

struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

/// The folder holding `initdb` and `pg_ctl` (PATH first, then Debian's versioned folders).
fn pg_bin() -> PathBuf {
    if let Ok(p) = which("pg_ctl") {
        return p.parent().unwrap().to_path_buf();
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql` \
             (apt-get install postgresql) or set INTENTD_TEST_PG_URL"
        )
    })
}

fn which(cmd: &str) -> Result<PathBuf, ()> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map_err(|_| ())?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if out.status.success() && !p.is_empty() {
        Ok(PathBuf::from(p))
    } else {
        Err(())
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Cluster {
    /// Runs a PostgreSQL binary, as the `postgres` user when we are root.
    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let out = if self.as_postgres {
            let mut line = vec![exe.to_string_lossy().into_owned()];
            line.extend(args.iter().map(|a| a.to_string()));
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .args(&line)
                .output()
        } else {
            Command::new(&exe).args(args).output()
        }
        .unwrap_or_else(|e| panic!("run {tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A throw-away certificate authority and one server certificate it signed, for
/// `subject_alt_name` (e.g. `DNS:localhost`), made with the `openssl` CLI in `dir`.
pub struct TestCa {
    /// The CA's certificate (PEM): what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str, subject_alt_name: &str) -> TestCa {
        let p = |f: &str| dir.join(format!("{name}-{f}"));
        let s = |f: &str| p(f).to_string_lossy().into_owned();
        std::fs::write(
            p("ext.cnf"),
            format!(
                "subjectAltName={subject_alt_name}\nbasicConstraints=CA:FALSE\n\
                 keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        let ca_subject = format!("/CN=intentd test CA {name}");
        for args in [
            vec![
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &s("ca.key"),
                "-out",
                &s("ca.pem"),
                "-days",
                "2",
                "-subj",
                &ca_subject,
            ],
            vec![
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &s("server.key"),
                "-out",
                &s("server.csr"),
                "-subj",
                "/CN=localhost",
            ],
            vec![
                "x509",
                "-req",
                "-in",
                &s("server.csr"),
                "-CA",
                &s("ca.pem"),
                "-CAkey",
                &s("ca.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &s("server.pem"),
                "-extfile",
                &s("ext.cnf"),
            ],
        ] {
            let out = Command::new("openssl")
                .args(&args)
                .output()
                .expect("openssl is needed to make a test certificate (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TestCa {
            ca: p("ca.pem"),
            cert: p("server.pem"),
            key: p("server.key"),
        }
    }
}

impl TestPg {
    pub fn start() -> TestPg {
        if let Ok(url) = std::env::var("INTENTD_TEST_PG_URL") {
            return TestPg { url, cluster: None };
        }
        Self::start_cluster(None)
    }

    /// A fresh cluster (even with `INTENTD_TEST_PG_URL`: an outside server's TLS is not ours to
    /// set) with `ssl = on`, serving `tls.cert` and `tls.key`. PostgreSQL wants the key owned by
    /// the cluster's user with mode 0600, so both are copied into the cluster's folder.
    pub fn start_tls(tls: &TestCa) -> TestPg {
        Self::start_cluster(Some(tls))
    }

    fn start_cluster(tls: Option<&TestCa>) -> TestPg {
        let bin = pg_bin();
        let as_postgres = is_root();
        // Not under a root-only temp folder: the postgres user must reach it.
        let base = if as_postgres {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("intentd-pg-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let ok = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "chown {} to postgres", dir.display());
        }
        let cluster = Cluster {
            dir: dir.clone(),
            bin,
            as_postgres,
        };
        let data = dir.join("data");
        let data_s = data.to_str().unwrap();
        cluster.run(
            "initdb",
            &[
                "-D",
                data_s,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        let port = free_port();
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            dir.display()
        );
        if let Some(tls) = tls {
            let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
            std::fs::copy(&tls.cert, &cert).unwrap();
            std::fs::copy(&tls.key, &key).unwrap();
            std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if cluster.as_postgres {
                for f in [&cert, &key] {
                    let ok = Command::new("chown")
                        .args(["postgres:postgres", f.to_str().unwrap()])
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "chown {} to postgres", f.display());
                }
            }
            // In postgresql.conf, not on the command line: a test may turn TLS off with
            // ALTER SYSTEM and a reload, which a command-line setting would override.
            let mut conf = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .unwrap();
            std::io::Write::write_all(
                &mut conf,
                format!(
                    "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                    cert.display(),
                    key.display()
                )
                .as_bytes(),
            )
            .unwrap();
        }
        cluster.run(
            "pg_ctl",
            &[
                "-D",
                data_s,
                "-o",
                &opts,
                "-l",
                dir.join("log").to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        TestPg {
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            cluster: Some(cluster),
        }
    }

    /// The cluster's folder (None with `INTENTD_TEST_PG_URL`).
    pub fn dir(&self) -> Option<&Path> {
        self.cluster.as_ref().map(|c| c.dir.as_path())
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        if let Some(c) = &self.cluster {
            let data = c.dir.join("data");
            let _ = std::panic::catch_unwind(|| {
                c.run(
                    "pg_ctl",
                    &[
                        "-D",
                        data.to_str().unwrap(),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ],
                )
            });
            let _ = std::fs::remove_dir_all(&c.dir);
        }
    }
}

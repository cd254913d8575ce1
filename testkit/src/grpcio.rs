//! [`GrpcioPod`]: a pod served by grpc-core (Python grpcio), the server most production gRPC
//! fleets run, with a maximum connection age. grpc-core ends an aged connection in its own
//! way (a GOAWAY, then the grace), which is where calls handed to that connection are lost.
//!
//! The Python comes from `$GRPCIO_PYTHON`, or `python3` on `PATH`; it must have `grpcio`
//! (`.ci/run` makes a venv with it).

use std::{
    io::{self, BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// One grpcio server process on a loopback address, serving `user.User/Call`. Dropping it
/// kills the process.
#[derive(Debug)]
pub struct GrpcioPod {
    child: Child,
    addr: SocketAddr,
}

impl Drop for GrpcioPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GrpcioPod {
    /// The Python interpreter the pods run on.
    pub fn python() -> PathBuf {
        std::env::var_os("GRPCIO_PYTHON").map_or_else(|| PathBuf::from("python3"), PathBuf::from)
    }

    /// Starts a pod named `name` on `addr` (port 0 picks one) whose connections live at most
    /// `max_age` (`None`: for good). Fails with a message saying how to get grpcio when the
    /// interpreter lacks it.
    pub fn start(addr: SocketAddr, name: &str, max_age: Option<Duration>) -> io::Result<GrpcioPod> {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("grpcio_pod.py");
        let age_ms = max_age.map_or(0, |a| a.as_millis());
        let mut child = Command::new(Self::python())
            .arg(&script)
            .arg(addr.to_string())
            .arg(name)
            .arg(age_ms.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let Some(port) = line
            .trim()
            .strip_prefix("ready ")
            .and_then(|p| p.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other(format!(
                "the grpcio pod did not start (said {line:?}): it needs Python with grpcio \
                 (`pip install grpcio`; set GRPCIO_PYTHON to that python; .ci/run does)"
            )));
        };
        Ok(GrpcioPod {
            child,
            addr: SocketAddr::new(addr.ip(), port),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Dies at once, as a pod that is killed.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

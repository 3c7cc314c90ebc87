//! BIRD as the agent's BGP dataplane: the [`crate::dataplane::BgpDataplane`] adapter over
//! [`crate::bird::BirdManager`], and the files and socket it uses.

use std::path::Path;

use tern::proto;

use crate::agent::BgpSettings;
use crate::bird::stale_routes::StaleRoutes;
use crate::bird::{self, ApplyOutcome, BirdManager, BirdMode};
use crate::calc::bird::RenderOptions;
use crate::dataplane::{BgpApplied, BgpDataplane, BgpError};
use crate::exec::Exec;

/// BIRD behind the apply loop.
#[derive(Debug)]
pub struct Bird {
    mgr: BirdManager,
    stale_routes: StaleRoutes,
}

impl Bird {
    pub fn new(opts: bird::BirdOptions) -> Result<Bird, bird::BirdError> {
        Ok(Bird {
            mgr: BirdManager::new(opts)?,
            stale_routes: StaleRoutes::default(),
        })
    }
}

impl BgpDataplane for Bird {
    fn apply(&mut self, config: &str) -> Result<BgpApplied, BgpError> {
        match self.mgr.apply(config)? {
            ApplyOutcome::Unchanged => Ok(BgpApplied::Unchanged),
            outcome => {
                tracing::info!(?outcome, "BIRD configuration installed");
                Ok(BgpApplied::Reloaded)
            }
        }
    }

    fn status(&mut self) -> proto::BgpStatus {
        // The periodic look at BIRD (and the one after every apply) also removes the
        // kernel routes BIRD left at a metric it no longer uses (a changed priority).
        let o = self.mgr.options();
        self.stale_routes
            .poll(&o.exec, &o.socket_path, o.command_timeout);
        self.mgr.status().unwrap_or_else(|e| proto::BgpStatus {
            state: "error".into(),
            error: e.to_string(),
            ..Default::default()
        })
    }

    fn session_marks(&mut self) -> Option<String> {
        self.mgr.session_marks()
    }

    fn cleanup(&mut self) -> Result<(), BgpError> {
        // Stops the watcher first, so BIRD is not restarted behind our back.
        self.mgr.cleanup()?;
        if self.mgr.options().mode == BirdMode::Supervised {
            flush_bird_routes(&self.mgr.options().exec)?;
        }
        Ok(())
    }
}

/// BIRD options for the agent's state directory and control socket.
pub fn bird_options(
    exec: &Exec,
    state_dir: &Path,
    socket: &Path,
    managed: bool,
) -> bird::BirdOptions {
    let mode = if managed {
        BirdMode::Supervised
    } else {
        BirdMode::External
    };
    let mut o = bird::BirdOptions::new(state_dir.join("bird.conf"), socket.to_path_buf(), mode);
    o.exec = exec.clone();
    o.log_file = Some(state_dir.join("bird.log"));
    // BIRD starts in graceful restart recovery (`bird -R`), as Calico starts it: its
    // peers then hear that it kept forwarding, keep its routes until it has sent
    // them again, and a restart costs no packet (tests/bgp_graceful_restart.rs counts
    // them). Without it a helper such as FRR drops the routes the moment the session
    // is back and before BIRD re-advertises them. The price: after a start BIRD holds
    // kernel route changes back until its sessions are up, at most for the `graceful
    // restart wait` of the rendered configuration.
    o.graceful_restart = true;
    o
}

/// The BGP settings of a running agent.
pub fn settings(
    exec: &Exec,
    state_dir: &Path,
    socket: &Path,
    managed: bool,
    render: RenderOptions,
) -> anyhow::Result<BgpSettings> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bird = Bird::new(bird_options(exec, state_dir, socket, managed))?;
    Ok(BgpSettings {
        render,
        dataplane: Box::new(bird),
    })
}

/// `tern-agent cleanup`: stop the BIRD tern supervises and remove its files. With a
/// BIRD managed elsewhere (`managed` false) only tern's staging file goes.
pub fn cleanup(exec: &Exec, state_dir: &Path, socket: &Path, managed: bool) -> Result<(), String> {
    let mut errors = Vec::new();
    if let Err(e) = bird::cleanup(&bird_options(exec, state_dir, socket, managed)) {
        errors.push(e.to_string());
    }
    if managed {
        // BIRD's kernel protocol persists its routes (so a BIRD restart does not flap
        // them); once tern's BIRD is gone for good, its routes go too.
        if let Err(e) = flush_bird_routes(exec) {
            errors.push(e.to_string());
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Remove the routes BIRD installed (`proto bird`) in both families.
pub fn flush_bird_routes(exec: &Exec) -> Result<(), BgpError> {
    for family in ["-4", "-6"] {
        exec.run("ip", &[family, "route", "flush", "proto", "bird"], None)
            .map_err(BgpError::Routes)?;
    }
    Ok(())
}

//! Multi-process data-parallel training on PyTorch's c10d engine.
//!
//! The same engine `torch.distributed` runs (Li et al., "PyTorch Distributed: Experiences
//! on Accelerating Data Parallel Training", arXiv 2006.15704): a `TCPStore` for the
//! rendezvous, `ProcessGroupGloo` for CPU tensors and `ProcessGroupNCCL` for CUDA tensors
//! (when genlab is built with the `nccl` feature), reached through a small C++ shim
//! (`csrc/dist.cpp`) because tch binds none of c10d.
//!
//! A process joins from torchrun's environment ([`DistEnv::from_env`]: `MASTER_ADDR`,
//! `MASTER_PORT`, `RANK`, `WORLD_SIZE`, `LOCAL_RANK`), so `torchrun --no-python genlab ...`
//! and `genlab launch` start the same processes. [`init`] makes the group the
//! process-wide default, as `torch.distributed.init_process_group` does; from then on
//! [`crate::optim::Adam`] averages gradients over the ranks before every update (in
//! buckets of [`BUCKET_BYTES`], like DDP's 25 MB), the harness broadcasts the initial
//! state from rank 0 and agrees on stops, and loaders shard by rank.
//!
//! A collective that fails (a peer died, or did not answer within the timeout) makes the
//! group unusable: every later collective fails at once with the first error, which the
//! harness returns after the step, so no rank waits for a collective that cannot complete.
use crate::error::{CoreError, Result};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tch::{Kind, Tensor};

/// Gradients are all-reduced in pieces of about this many bytes (DDP's `bucket_cap_mb`).
pub const BUCKET_BYTES: i64 = 25 * 1024 * 1024;

/// How long a collective may wait for its peers unless told otherwise
/// (`--dist-timeout`, `GENLAB_DIST_TIMEOUT`); PyTorch's default is 30 minutes.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

#[allow(unsafe_code)]
mod ffi {
    use std::os::raw::{c_char, c_int, c_longlong, c_void};
    extern "C" {
        pub fn genlab_dist_has_nccl() -> c_int;
        pub fn genlab_dist_init(
            addr: *const c_char,
            port: c_int,
            rank: c_int,
            world_size: c_int,
            store_is_server: c_int,
            timeout_ms: c_longlong,
            prefix: *const c_char,
            use_nccl: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> *mut c_void;
        pub fn genlab_dist_all_reduce(
            h: *mut c_void,
            t: *mut torch_sys::C_tensor,
            op: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn genlab_dist_broadcast(
            h: *mut c_void,
            t: *mut torch_sys::C_tensor,
            root: c_int,
            err: *mut c_char,
            err_len: usize,
        ) -> c_int;
        pub fn genlab_dist_barrier(h: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
        pub fn genlab_dist_destroy(h: *mut c_void, err: *mut c_char, err_len: usize) -> c_int;
    }
}

/// The shim's handle. c10d's process groups are used from any thread (they run their
/// collectives on their own worker threads), so the handle may move between threads.
struct Handle(*mut std::os::raw::c_void);
#[allow(unsafe_code)]
// SAFETY: the handle is an owned `Group*` that only the shim dereferences; c10d backends
// are thread-safe, and `ProcessGroup` serialises destruction through `Mutex<Option<..>>`.
unsafe impl Send for Handle {}
#[allow(unsafe_code)]
// SAFETY: see `Send`.
unsafe impl Sync for Handle {}

const ERR_LEN: usize = 4096;

fn err_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let s = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if s.is_empty() {
        "unknown error".into()
    } else {
        s
    }
}

/// Whether this build can create NCCL groups (the `nccl` feature with CUDA headers).
#[allow(unsafe_code)]
pub fn nccl_available() -> bool {
    // SAFETY: a pure query without arguments.
    unsafe { ffi::genlab_dist_has_nccl() == 1 }
}

/// Where this process sits in a distributed run, as torchrun describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DistEnv {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
    /// torchrun's agent already serves the store (`TORCHELASTIC_USE_AGENT_STORE`): every
    /// rank, rank 0 included, connects as a client.
    pub agent_store: bool,
    /// torchrun's restart count, so that a restarted group does not read stale keys.
    pub restart_count: u64,
}

impl DistEnv {
    /// Read torchrun's variables. `None` when `WORLD_SIZE` is unset or 1 (a single process).
    pub fn from_env() -> Result<Option<DistEnv>> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// [`DistEnv::from_env`] over any variable lookup (testable).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Option<DistEnv>> {
        let Some(world) = get("WORLD_SIZE") else { return Ok(None) };
        let num = |key: &str, default: Option<&str>| -> Result<u64> {
            let v = get(key).or_else(|| default.map(String::from)).ok_or_else(|| {
                CoreError::Config(format!(
                    "distributed run: WORLD_SIZE is set but {key} is not (launch with torchrun or `genlab launch`)"
                ))
            })?;
            v.trim()
                .parse::<u64>()
                .map_err(|_| CoreError::Config(format!("distributed run: {key}=`{v}` is not a number")))
        };
        let world_size = world
            .trim()
            .parse::<usize>()
            .map_err(|_| CoreError::Config(format!("distributed run: WORLD_SIZE=`{world}` is not a number")))?;
        if world_size <= 1 {
            return Ok(None);
        }
        let rank = num("RANK", None)? as usize;
        if rank >= world_size {
            return Err(CoreError::Config(format!(
                "distributed run: RANK {rank} is not below WORLD_SIZE {world_size}"
            )));
        }
        let port = num("MASTER_PORT", None)?;
        let master_port = u16::try_from(port)
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| CoreError::Config(format!("distributed run: MASTER_PORT {port} is not a port")))?;
        let agent = get("TORCHELASTIC_USE_AGENT_STORE").map(|v| v.eq_ignore_ascii_case("true") || v == "1");
        Ok(Some(DistEnv {
            master_addr: get("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
            master_port,
            rank,
            world_size,
            local_rank: num("LOCAL_RANK", Some("0"))? as usize,
            agent_store: agent.unwrap_or(false),
            restart_count: num("TORCHELASTIC_RESTART_COUNT", Some("0"))?,
        }))
    }
}

/// How to create a group.
#[derive(Debug, Clone, Copy)]
pub struct DistOptions {
    /// The longest any collective (and the rendezvous) waits for the other ranks.
    pub timeout: Duration,
    /// Create an NCCL group for CUDA tensors besides the Gloo group.
    pub nccl: bool,
}

impl Default for DistOptions {
    fn default() -> Self {
        DistOptions { timeout: DEFAULT_TIMEOUT, nccl: false }
    }
}

impl DistOptions {
    /// The timeout from `GENLAB_DIST_TIMEOUT` (seconds) if set, else [`DEFAULT_TIMEOUT`];
    /// NCCL when this build has it and a GPU is visible.
    pub fn from_env() -> Result<Self> {
        let timeout = match std::env::var("GENLAB_DIST_TIMEOUT") {
            Ok(v) => {
                Duration::from_secs_f64(v.trim().parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0).ok_or_else(
                    || CoreError::Config(format!("GENLAB_DIST_TIMEOUT=`{v}` is not a positive number of seconds")),
                )?)
            }
            Err(_) => DEFAULT_TIMEOUT,
        };
        // NCCL for CUDA tensors wherever it can exist; its communicators start lazily.
        let nccl = nccl_available() && tch::Cuda::is_available();
        Ok(DistOptions { timeout, nccl })
    }
}

/// Reduction of [`ProcessGroup::all_reduce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

/// A group of processes training together (one per rank).
pub struct ProcessGroup {
    handle: Mutex<Option<Handle>>,
    rank: usize,
    world_size: usize,
    local_rank: usize,
    timeout: Duration,
    /// The first collective failure; once set, every collective fails with it.
    failure: Mutex<Option<CoreError>>,
}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

static DEFAULT_GROUP: Mutex<Option<Arc<ProcessGroup>>> = Mutex::new(None);

/// The process-wide group [`init`] created, if any.
pub fn group() -> Option<Arc<ProcessGroup>> {
    DEFAULT_GROUP.lock().ok().and_then(|g| g.clone())
}

/// `(rank, world_size)` of the default group, `(0, 1)` without one.
pub fn rank_and_world() -> (usize, usize) {
    group().map(|g| (g.rank, g.world_size)).unwrap_or((0, 1))
}

/// This process's local rank (its GPU on a multi-GPU machine), 0 without a group.
pub fn local_rank() -> usize {
    group().map(|g| g.local_rank).unwrap_or(0)
}

/// Whether this process writes the run's files (rank 0, or a single process).
pub fn is_leader() -> bool {
    rank_and_world().0 == 0
}

/// Join the group `env` describes and make it the process-wide default.
#[allow(unsafe_code)]
pub fn init(env: &DistEnv, opts: DistOptions) -> Result<Arc<ProcessGroup>> {
    if group().is_some() {
        return Err(CoreError::Config("a distributed process group is already initialised".into()));
    }
    let cstr = |s: &str, what: &str| {
        std::ffi::CString::new(s).map_err(|_| CoreError::Config(format!("distributed run: {what} contains a NUL byte")))
    };
    let addr = cstr(&env.master_addr, "MASTER_ADDR")?;
    let prefix = cstr(&format!("genlab/attempt_{}/", env.restart_count), "prefix")?;
    let timeout_ms = opts.timeout.as_millis().min(i64::MAX as u128) as i64;
    let mut err = vec![0u8; ERR_LEN];
    let server = !env.agent_store && env.rank == 0;
    // SAFETY: the strings outlive the call; `err` is a writable buffer of `err.len()` bytes.
    let h = unsafe {
        ffi::genlab_dist_init(
            addr.as_ptr(),
            i32::from(env.master_port),
            env.rank as i32,
            env.world_size as i32,
            i32::from(server),
            timeout_ms,
            prefix.as_ptr(),
            i32::from(opts.nccl),
            err.as_mut_ptr().cast(),
            err.len(),
        )
    };
    if h.is_null() {
        return Err(CoreError::Dist {
            rank: env.rank,
            world: env.world_size,
            what: format!(
                "joining the group at {}:{} (store {})",
                env.master_addr,
                env.master_port,
                if server { "served by this rank" } else { "client" }
            ),
            message: err_text(&err),
        });
    }
    let g = Arc::new(ProcessGroup {
        handle: Mutex::new(Some(Handle(h))),
        rank: env.rank,
        world_size: env.world_size,
        local_rank: env.local_rank,
        timeout: opts.timeout,
        failure: Mutex::new(None),
    });
    if let Ok(mut slot) = DEFAULT_GROUP.lock() {
        *slot = Some(Arc::clone(&g));
    }
    Ok(g)
}

/// Join from torchrun's environment when there is one (see [`DistEnv::from_env`]).
pub fn init_from_env(opts: DistOptions) -> Result<Option<Arc<ProcessGroup>>> {
    match DistEnv::from_env()? {
        Some(env) => init(&env, opts).map(Some),
        None => Ok(None),
    }
}

/// Leave the default group: a barrier (so no rank tears down while another still
/// communicates), then destroy it. A no-op without a group.
pub fn shutdown() -> Result<()> {
    let g = DEFAULT_GROUP.lock().ok().and_then(|mut s| s.take());
    match g {
        Some(g) => {
            let barrier = g.barrier();
            let destroyed = g.destroy();
            barrier.and(destroyed)
        }
        None => Ok(()),
    }
}

/// Forget the default group without the closing barrier (after a failure, when peers
/// may be gone).
pub fn abandon() {
    if let Some(g) = DEFAULT_GROUP.lock().ok().and_then(|mut s| s.take()) {
        let _ = g.destroy();
    }
}

impl ProcessGroup {
    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world_size
    }
    pub fn local_rank(&self) -> usize {
        self.local_rank
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The first collective failure, if any (see the module docs).
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().ok().and_then(|f| f.as_ref().map(clone_err)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fail(&self, what: &str, message: String) -> CoreError {
        let e = CoreError::Dist {
            rank: self.rank,
            world: self.world_size,
            what: format!("{what} (timeout {:.0} s)", self.timeout.as_secs_f64()),
            message,
        };
        if let Ok(mut f) = self.failure.lock() {
            if f.is_none() {
                *f = Some(clone_err(&e));
            }
        }
        e
    }

    #[allow(unsafe_code)]
    fn call(
        &self,
        what: &str,
        f: impl FnOnce(*mut std::os::raw::c_void, *mut std::os::raw::c_char, usize) -> i32,
    ) -> Result<()> {
        self.check()?;
        let handle = self.handle.lock().map_err(|_| self.fail(what, "process group lock poisoned".into()))?;
        let Some(h) = handle.as_ref() else {
            return Err(self.fail(what, "the process group was destroyed".into()));
        };
        let mut err = vec![0u8; ERR_LEN];
        if f(h.0, err.as_mut_ptr().cast(), err.len()) != 0 {
            return Err(self.fail(what, err_text(&err)));
        }
        Ok(())
    }

    /// Reduce `t` over all ranks, in place. `t` must be contiguous (a flat buffer or a
    /// `narrow` of one); CPU tensors go through Gloo, CUDA tensors through NCCL.
    #[allow(unsafe_code)]
    pub fn all_reduce(&self, t: &mut Tensor, op: ReduceOp) -> Result<()> {
        let what = format!("all_reduce of {} {:?} values", t.numel(), t.kind());
        if !t.is_contiguous() {
            return Err(self.fail(&what, "the tensor is not contiguous".into()));
        }
        let code = match op {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        };
        let p = t.as_mut_ptr();
        // SAFETY: `h` is the live handle (held under the lock), `p` a live tensor borrowed
        // mutably for the call, `err` a buffer of `len` bytes.
        self.call(&what, |h, err, len| unsafe { ffi::genlab_dist_all_reduce(h, p, code, err, len) })
    }

    /// Average `t` over all ranks in place, in pieces of about [`BUCKET_BYTES`]
    /// (c10d reduces one tensor per call; this is how a flat gradient buffer is synced).
    pub fn all_reduce_mean(&self, t: &Tensor) -> Result<()> {
        let n = t.numel() as i64;
        let elem = t.kind().elt_size_in_bytes() as i64;
        let bucket = (BUCKET_BYTES / elem.max(1)).max(1);
        let flat = t.view([-1]);
        let mut off = 0;
        while off < n {
            let len = bucket.min(n - off);
            let mut piece = flat.narrow(0, off, len);
            self.all_reduce(&mut piece, ReduceOp::Sum)?;
            off += len;
        }
        tch::no_grad(|| {
            let _ = flat.shallow_clone().g_div_scalar_(self.world_size as f64);
        });
        Ok(())
    }

    /// Copy rank `root`'s `t` into every rank's `t`, in place.
    #[allow(unsafe_code)]
    pub fn broadcast(&self, t: &mut Tensor, root: usize) -> Result<()> {
        let what = format!("broadcast of {} {:?} values from rank {root}", t.numel(), t.kind());
        if !t.is_contiguous() {
            let mut tmp = t.contiguous();
            self.broadcast(&mut tmp, root)?;
            tch::no_grad(|| t.copy_(&tmp));
            return Ok(());
        }
        let p = t.as_mut_ptr();
        // SAFETY: as in `all_reduce`.
        self.call(&what, |h, err, len| unsafe { ffi::genlab_dist_broadcast(h, p, root as i32, err, len) })
    }

    /// Broadcast bytes (a JSON document, say) from `root`; other ranks' `bytes` are replaced.
    pub fn broadcast_bytes(&self, bytes: &mut Vec<u8>, root: usize) -> Result<()> {
        let mut len = Tensor::from_slice(&[bytes.len() as i64]);
        self.broadcast(&mut len, root)?;
        let n = len.int64_value(&[0]).max(0) as usize;
        let mut buf = if self.rank == root {
            Tensor::from_slice(bytes.as_slice())
        } else {
            Tensor::zeros([n as i64], (Kind::Uint8, tch::Device::Cpu))
        };
        self.broadcast(&mut buf, root)?;
        *bytes = Vec::<u8>::try_from(&buf).map_err(|e| self.fail("broadcast of bytes", e.to_string()))?;
        Ok(())
    }

    /// Wait until every rank has reached this point.
    #[allow(unsafe_code)]
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: as in `all_reduce`.
        self.call("barrier", |h, err, len| unsafe { ffi::genlab_dist_barrier(h, err, len) })
    }

    #[allow(unsafe_code)]
    fn destroy(&self) -> Result<()> {
        let h = self.handle.lock().ok().and_then(|mut h| h.take());
        let Some(h) = h else { return Ok(()) };
        let mut err = vec![0u8; ERR_LEN];
        // SAFETY: the handle was taken out of the group, so nothing else uses it; the shim
        // frees it whatever the outcome.
        let rc = unsafe { ffi::genlab_dist_destroy(h.0, err.as_mut_ptr().cast(), err.len()) };
        if rc != 0 {
            return Err(CoreError::Dist {
                rank: self.rank,
                world: self.world_size,
                what: "shutting the group down".into(),
                message: err_text(&err),
            });
        }
        Ok(())
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}

fn clone_err(e: &CoreError) -> CoreError {
    match e {
        CoreError::Dist { rank, world, what, message } => {
            CoreError::Dist { rank: *rank, world: *world, what: what.clone(), message: message.clone() }
        }
        other => CoreError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_torchrun_environment() {
        assert_eq!(DistEnv::from_lookup(env(&[])).unwrap(), None);
        assert_eq!(DistEnv::from_lookup(env(&[("WORLD_SIZE", "1"), ("RANK", "0")])).unwrap(), None);
        let e = DistEnv::from_lookup(env(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ("TORCHELASTIC_RESTART_COUNT", "2"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!((e.rank, e.world_size, e.local_rank, e.master_port), (3, 4, 1, 29500));
        assert!(e.agent_store);
        assert_eq!(e.restart_count, 2);
        for (bad, needle) in [
            (vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")], "RANK is not"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")], "not below"),
            (vec![("WORLD_SIZE", "x")], "not a number"),
            (vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "70000")], "not a port"),
        ] {
            let e = DistEnv::from_lookup(env(&bad)).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn without_a_group_everything_is_one_process() {
        assert_eq!(rank_and_world(), (0, 1));
        assert!(is_leader());
        assert!(shutdown().is_ok());
    }
}

//! The per-node memory budget and the overload manager (issue 13). All pods of a node share one
//! proxy, so when it nears its memory budget it must shed load from the sources that hold most,
//! not be OOM-killed (which takes every pod's traffic down). Two parts:
//!
//! - [`decide`], a pure function: the process's memory use, what each source workload holds and
//!   the budget in; which sources refuse new connections and requests, and how many bytes of each
//!   one's oldest unfinished requests to reset, out. Unit-tested on its own.
//! - [`run`], the task that samples the process RSS (`/proc/self/statm`, every [`TICK`]: no
//!   syscall on the request path), asks [`decide`], applies the answer to the per-source state in
//!   `limits/source.rs` and returns freed memory to the kernel ([`crate::allocator::purge`]).
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::time::Instant;

/// Budget when the agent's cgroup sets no memory limit: 80 % of the DaemonSet's 512 MiB limit,
/// rounded down, so a node proxy run outside Kubernetes behaves as the DaemonSet's does.
pub const DEFAULT_BUDGET: u64 = 400 << 20;
/// Share of the cgroup's `memory.max` taken as the budget: the rest is headroom for what the
/// budget cannot see in time (kernel socket buffers charged to the cgroup, growth between two
/// samples, allocator slack).
pub const CGROUP_BUDGET_PERCENT: u64 = 80;
/// What one open client connection is counted as holding: its task, hyper's read and write
/// buffers and the socket's bookkeeping. The issue measured ~21 KB per idle keep-alive connection.
pub const CONNECTION_BYTES: u64 = 20 << 10;
/// What a parked connection (idle HTTP/1, its hyper buffers given back; see
/// `proxy::http_conn::parked`) is counted as holding instead: its task and small shared structs.
/// Counting it less than a served one is also what has the allocator purged when connections
/// park (a drop in held bytes), so the buffers they freed leave the RSS.
pub const PARKED_CONNECTION_BYTES: u64 = 4 << 10;
/// What one request in flight is counted as holding besides its read-ahead body: its task, the
/// request and response heads and its share of an upstream connection's buffers.
pub const REQUEST_BYTES: u64 = 16 << 10;
/// How often the RSS is sampled and the decision made. At 100 ms a client streaming at 1 GB/s
/// adds 100 MB between two looks, which the margin between the high watermark and the cgroup
/// limit (the budget's 10 % plus the 20 % the budget leaves) covers for the budgets used here.
pub const TICK: Duration = Duration::from_millis(100);
/// The allocator is purged at most this often for a drop in held bytes.
const PURGE_EVERY: Duration = Duration::from_secs(1);
/// Purges after the one a drop or a shed triggers, one per [`PURGE_EVERY`].
const FOLLOW_UP_PURGES: u8 = 4;

/// The budget and its watermarks, in bytes of process RSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// The memory the proxy should stay under.
    pub budget: u64,
    /// Shedding starts when usage passes this: 90 % of the budget.
    pub high: u64,
    /// Shedding stops when usage is back under this: 75 % of the budget (the gap keeps the
    /// manager from flapping around one line).
    pub low: u64,
}

impl Watermarks {
    /// The watermarks of `budget`.
    pub fn new(budget: u64) -> Self {
        // Divide first: never overflows, whatever the budget.
        Watermarks { budget, high: budget / 10 * 9, low: budget / 4 * 3 }
    }
}

/// What one source workload holds now, as the manager sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceLoad {
    /// Bytes attributed to it (see `SourceCaps::held_bytes`).
    pub held: u64,
    /// It is refusing new connections and requests already (shed at an earlier look).
    pub refusing: bool,
}

/// The manager's answer for one look, parallel to the sources it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Usage passed the high watermark and is not yet back under the low one.
    pub overloaded: bool,
    /// What each source may hold without being shed (0 when not overloaded).
    pub fair_share: u64,
    /// Per source: refuse new connections and requests.
    pub refuse: Vec<bool>,
    /// Per source: bytes of its oldest unfinished requests to reset now.
    pub free: Vec<u64>,
}

/// The overload decision. Usage enters overload above the high watermark and leaves it at or
/// under the low one. While overloaded, the memory the sources may share is the low watermark
/// minus what no source holds (the RSS not attributed to anyone: the agent itself, allocator
/// slack), split equally among the sources holding anything: that is the fair share. The excess
/// over the low watermark is taken from the sources above their fair share, heaviest first, each
/// down to its fair share at most; a source shed now, or shed before and still above its fair
/// share, refuses new connections and requests. A source at or under its fair share is never shed.
pub fn decide(w: &Watermarks, was_overloaded: bool, usage: u64, sources: &[SourceLoad]) -> Plan {
    let overloaded = if was_overloaded { usage > w.low } else { usage > w.high };
    let n = sources.len();
    let mut plan = Plan { overloaded, fair_share: 0, refuse: vec![false; n], free: vec![0; n] };
    if !overloaded {
        return plan;
    }
    let active = sources.iter().filter(|s| s.held > 0).count() as u64;
    let held: u64 = sources.iter().fold(0, |t, s| t.saturating_add(s.held));
    let unattributed = usage.saturating_sub(held);
    let Some(fair) = w.low.saturating_sub(unattributed).checked_div(active) else { return plan };
    plan.fair_share = fair;
    let mut need = usage.saturating_sub(w.low);
    let mut order: Vec<usize> = (0..n).collect();
    // Heaviest first; equal ones in a stable order.
    order.sort_by(|a, b| sources[*b].held.cmp(&sources[*a].held).then(a.cmp(b)));
    for i in order {
        let s = sources[i];
        if s.held <= fair {
            break;
        }
        if need > 0 {
            let take = need.min(s.held - fair);
            plan.free[i] = take;
            need -= take;
            plan.refuse[i] = true;
        }
        plan.refuse[i] |= s.refusing;
    }
    plan
}

/// When to give freed memory back to the kernel. jemalloc returns freed pages on its own only
/// when it is next used (its decay runs inside allocations): an agent gone quiet after a burst
/// would keep the burst's RSS; a purge returns them at once.
#[derive(Debug, Default)]
pub struct MemoryReturn {
    /// The most bytes held by all sources since the last purge.
    peak_held: u64,
    last_purge: Option<Instant>,
    /// The last look shed requests or ended an overload: purge before the next sample, so it sees
    /// what the reset requests gave back.
    after_shed: bool,
    /// More purges, a second apart, after a drop or a shed: the connections and tasks of the
    /// requests that ended go a moment after their bytes stop being counted, and idle upstream
    /// connections 1.5 s later (their idle timeout).
    again_at: Option<Instant>,
    again_left: u8,
}

impl MemoryReturn {
    /// Whether to purge now, given the bytes all sources hold and the budget: after a look that
    /// shed or ended an overload, or when held bytes fell by a 64th of the budget since the
    /// last purge (at most once per [`PURGE_EVERY`]); then [`FOLLOW_UP_PURGES`] more, [`PURGE_EVERY`]
    /// apart.
    pub fn should_purge(&mut self, now: Instant, held: u64, budget: u64) -> bool {
        self.peak_held = self.peak_held.max(held);
        let dropped = self.peak_held.saturating_sub(held) >= (budget / 64).max(1 << 20);
        let due = self.last_purge.is_none_or(|t| now.saturating_duration_since(t) >= PURGE_EVERY);
        if std::mem::take(&mut self.after_shed) || (dropped && due) {
            self.last_purge = Some(now);
            self.again_at = now.checked_add(PURGE_EVERY);
            self.again_left = FOLLOW_UP_PURGES;
            self.peak_held = held;
            return true;
        }
        if self.again_left > 0 && self.again_at.is_some_and(|t| now >= t) {
            self.again_left -= 1;
            self.again_at = now.checked_add(PURGE_EVERY);
            self.last_purge = Some(now);
            return true;
        }
        false
    }

    /// The look just made shed requests or ended an overload.
    pub fn shed(&mut self) {
        self.after_shed = true;
    }
}

/// The overload state the proxy shares with `/metrics`.
#[derive(Debug)]
pub struct Overload {
    /// The budget and watermarks, fixed at start.
    pub watermarks: Watermarks,
    resident: AtomicU64,
    socket: AtomicU64,
    active: AtomicBool,
}

impl Overload {
    /// No sample yet, not overloaded.
    pub fn new(budget: u64) -> Self {
        Overload {
            watermarks: Watermarks::new(budget),
            resident: AtomicU64::new(0),
            socket: AtomicU64::new(0),
            active: AtomicBool::new(false),
        }
    }

    /// The last RSS sample, in bytes.
    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// The last sample of the kernel's socket buffers charged to the agent's cgroup, in bytes (0
    /// when the cgroup does not say: see [`SocketMemory`]).
    pub fn socket(&self) -> u64 {
        self.socket.load(Ordering::Relaxed)
    }

    /// Whether the proxy is shedding load now.
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }
}

/// One look: decides on `usage` and what each source holds, and applies it — refusal flags set
/// or cleared, the oldest requests of shed sources reset and counted in
/// `mesh_overload_shed_total{source_workload,action="request_reset"}`.
pub fn look(state: &super::ProxyState, usage: u64) -> Plan {
    let sources = state.live_sources();
    let loads: Vec<SourceLoad> =
        sources.iter().map(|(_, c)| SourceLoad { held: c.held_bytes(), refusing: c.refusing() }).collect();
    let o = &state.overload;
    let was = o.active();
    let plan = decide(&o.watermarks, was, usage, &loads);
    o.resident.store(usage, Ordering::Relaxed);
    o.active.store(plan.overloaded, Ordering::Relaxed);
    if plan.overloaded != was {
        let w = o.watermarks;
        if plan.overloaded {
            tracing::warn!(
                rss = usage,
                high = w.high,
                budget = w.budget,
                fair_share = plan.fair_share,
                "memory overload: shedding the heaviest sources"
            );
        } else {
            tracing::info!(rss = usage, low = w.low, "memory overload over");
        }
    }
    for (i, (name, caps)) in sources.iter().enumerate() {
        caps.set_refusing(plan.refuse[i]);
        if plan.free[i] > 0 {
            let reset = caps.shed_oldest(plan.free[i]);
            tracing::debug!(source = %name, bytes = plan.free[i], reset, held = loads[i].held, "shedding");
            if reset > 0 {
                state.metrics.add(
                    "mesh_overload_shed_total",
                    &[("source_workload", name), ("action", "request_reset")],
                    u64::from(reset),
                );
            }
        }
    }
    plan
}

/// Whether the manager purges the allocator (`MESH_MEMORY_RETURN`, a switch kept for measuring
/// the memory return; see README, Tenant isolation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryReturnMode {
    /// [`crate::allocator::purge`] per [`MemoryReturn`] (the default).
    Purge,
    /// No purge: only jemalloc's own decay, which runs when the allocator is next used.
    Off,
}

impl MemoryReturnMode {
    /// `off` when `MESH_MEMORY_RETURN` says so, `Purge` for anything else.
    pub fn from_env() -> Self {
        match std::env::var("MESH_MEMORY_RETURN").as_deref() {
            Ok("off") => MemoryReturnMode::Off,
            _ => MemoryReturnMode::Purge,
        }
    }
}

/// The overload manager: every [`TICK`], purges the allocator when due, samples the RSS and makes
/// a [`look`]. Runs until the process ends.
pub async fn run(state: Arc<super::ProxyState>) {
    let mode = MemoryReturnMode::from_env();
    if mode != MemoryReturnMode::Purge {
        tracing::info!(?mode, "memory return mode (MESH_MEMORY_RETURN)");
    }
    let page = page_size();
    let mut interval = tokio::time::interval(TICK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut memory = MemoryReturn::default();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let sockets = SocketMemory::find(&own, Path::new("/sys/fs/cgroup"));
    tracing::info!(source = ?sockets, "kernel socket buffers counted in the memory budget from");
    loop {
        interval.tick().await;
        let held = state.live_sources().iter().fold(0u64, |t, (_, c)| t.saturating_add(c.held_bytes()));
        if memory.should_purge(Instant::now(), held, state.overload.watermarks.budget)
            && mode == MemoryReturnMode::Purge
        {
            crate::allocator::purge();
        }
        let Some((rss, socket)) = sample(page, &sockets) else {
            tracing::warn!("cannot read /proc/self/statm; the overload manager stops");
            return;
        };
        state.overload.socket.store(socket, Ordering::Relaxed);
        let was = state.overload.active();
        let plan = look(&state, rss.saturating_add(socket));
        if plan.free.iter().any(|f| *f > 0) || (was && !plan.overloaded) {
            memory.shed();
        }
    }
}

/// The process's RSS and the socket buffers charged to its cgroup, in bytes. The socket buffers
/// count against the budget too: they are charged to the cgroup whose limit OOM-kills the agent,
/// outside its RSS (a client that stops reading its responses fills them, not the heap).
fn sample(page: u64, sockets: &SocketMemory) -> Option<(u64, u64)> {
    let rss = parse_statm(&std::fs::read_to_string("/proc/self/statm").ok()?, page)?;
    Some((rss, sockets.read().unwrap_or(0)))
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|p| *p > 0).unwrap_or(4096)
}

/// The resident set size in bytes from `/proc/self/statm` (its second field, in pages).
pub fn parse_statm(text: &str, page: u64) -> Option<u64> {
    text.split_whitespace().nth(1)?.parse::<u64>().ok()?.checked_mul(page)
}

/// Where the kernel's socket buffers charged to the agent's cgroup are read: cgroup v2's
/// `memory.stat` `sock` line, or cgroup v1's `memory.kmem.tcp.usage_in_bytes` (counted only
/// when the cgroup sets a TCP limit, else 0). Neither found (the agent in the root cgroup): none
/// are counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SocketMemory {
    /// A cgroup v2 `memory.stat`.
    V2Stat(PathBuf),
    /// A cgroup v1 `memory.kmem.tcp.usage_in_bytes`.
    V1KmemTcp(PathBuf),
    /// Not read.
    None,
}

impl SocketMemory {
    /// Finds the file for the process whose `/proc/self/cgroup` is `self_cgroup`, under the
    /// cgroup mount `root` (`/sys/fs/cgroup`): v2 mounted there (unified) or at `unified/`
    /// (hybrid, when it has the memory controller), else v1's `memory/`.
    pub fn find(self_cgroup: &str, root: &Path) -> Self {
        if let Some(p) = cgroup_path(self_cgroup).map(|p| p.trim_start_matches('/')).filter(|p| !p.is_empty()) {
            for v2 in [root.to_path_buf(), root.join("unified")] {
                let stat = v2.join(p).join("memory.stat");
                if stat.is_file() {
                    return SocketMemory::V2Stat(stat);
                }
            }
        }
        let v1 = self_cgroup.lines().find_map(|l| {
            let (_, rest) = l.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            controllers.split(',').any(|c| c == "memory").then_some(path)
        });
        if let Some(p) = v1.map(|p| p.trim_start_matches('/')).filter(|p| !p.is_empty()) {
            let usage = root.join("memory").join(p).join("memory.kmem.tcp.usage_in_bytes");
            if usage.is_file() {
                return SocketMemory::V1KmemTcp(usage);
            }
        }
        SocketMemory::None
    }

    /// The bytes now, or None when the file cannot be read or parsed.
    pub fn read(&self) -> Option<u64> {
        match self {
            SocketMemory::V2Stat(p) => parse_memory_stat_sock(&std::fs::read_to_string(p).ok()?),
            SocketMemory::V1KmemTcp(p) => std::fs::read_to_string(p).ok()?.trim().parse().ok(),
            SocketMemory::None => None,
        }
    }
}

/// The `sock` line of a cgroup v2 `memory.stat`: bytes in network transmission buffers.
pub fn parse_memory_stat_sock(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("sock ")?.trim().parse().ok())
}

/// Where the default budget came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetOrigin {
    /// `--memory-budget`.
    Flag,
    /// [`CGROUP_BUDGET_PERCENT`] of the smallest `memory.max` on the agent's cgroup path.
    Cgroup {
        /// That `memory.max`.
        memory_max: u64,
    },
    /// [`DEFAULT_BUDGET`]: no cgroup memory limit found.
    Default,
}

/// The budget when `--memory-budget` is not given: [`CGROUP_BUDGET_PERCENT`] of the agent's
/// cgroup memory limit (the smallest `memory.max` from its cgroup up to the root of the cgroup v2
/// mount at `mount`, `/proc/self/cgroup` read as `self_cgroup`), else [`DEFAULT_BUDGET`].
pub fn default_budget(self_cgroup: &str, mount: &Path) -> (u64, BudgetOrigin) {
    let limit = cgroup_path(self_cgroup).and_then(|p| {
        let mut dir: PathBuf = mount.join(p.trim_start_matches('/'));
        let mut min: Option<u64> = None;
        loop {
            if let Some(m) = std::fs::read_to_string(dir.join("memory.max")).ok().and_then(|s| parse_memory_max(&s)) {
                min = Some(min.map_or(m, |x| x.min(m)));
            }
            if dir == mount || !dir.pop() || !dir.starts_with(mount) {
                break;
            }
        }
        min
    });
    match limit {
        Some(m) => (m / 100 * CGROUP_BUDGET_PERCENT, BudgetOrigin::Cgroup { memory_max: m }),
        None => (DEFAULT_BUDGET, BudgetOrigin::Default),
    }
}

/// The cgroup v2 path in `/proc/self/cgroup` (the `0::/path` line).
pub fn cgroup_path(self_cgroup: &str) -> Option<&str> {
    self_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// A `memory.max` value: a byte count, or None for `max` (no limit) and anything unreadable.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A byte size flag: a number with an optional binary (`Ki`, `Mi`, `Gi`) or decimal (`K`, `M`,
/// `G`) suffix. Must be positive.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 400Mi"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "k" | "KB" => 1000,
        "M" | "MB" => 1000 * 1000,
        "G" | "GB" => 1000 * 1000 * 1000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        u => return Err(format!("{s:?}: unknown unit {u:?} (use Ki, Mi, Gi, K, M or G)")),
    };
    let v = n.checked_mul(mult).ok_or_else(|| format!("{s:?}: too large"))?;
    if v == 0 {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn w() -> Watermarks {
        // high 90 MiB, low 75 MiB.
        Watermarks::new(100 * MIB)
    }

    fn load(held_mib: u64) -> SourceLoad {
        SourceLoad { held: held_mib * MIB, refusing: false }
    }

    #[test]
    fn under_the_high_watermark_nothing_is_shed() {
        let p = decide(&w(), false, 90 * MIB, &[load(80), load(1)]);
        assert!(!p.overloaded);
        assert_eq!(p.free, vec![0, 0]);
        assert_eq!(p.refuse, vec![false, false]);
    }

    #[test]
    fn over_the_high_watermark_the_heaviest_source_gives_back_the_excess_over_the_low_one() {
        // 95 MiB used: 80 held by the noisy source, 5 by the quiet one, 10 by nobody. The 20 MiB
        // above the low watermark come from the noisy one alone.
        let p = decide(&w(), false, 95 * MIB, &[load(5), load(80)]);
        assert!(p.overloaded);
        assert_eq!(p.fair_share, (75 - 10) * MIB / 2);
        assert_eq!(p.free, vec![0, 20 * MIB]);
        assert_eq!(p.refuse, vec![false, true]);
    }

    #[test]
    fn overload_holds_until_the_low_watermark_then_every_refusal_ends() {
        let refusing = |mib| SourceLoad { held: mib * MIB, refusing: true };
        // At the low watermark it is over: nothing shed, every refusal lifted.
        let p = decide(&w(), true, 75 * MIB, &[load(1), refusing(70)]);
        assert!(!p.overloaded);
        assert_eq!(p.refuse, vec![false, false]);
        // Between the watermarks it still holds: 5 MiB over the low one come from the heaviest,
        // and the other source shed before, still over its fair share (75/3 = 25 MiB with
        // nothing unattributed), keeps refusing though nothing is taken from it now.
        let p = decide(&w(), true, 80 * MIB, &[load(2), refusing(48), refusing(30)]);
        assert!(p.overloaded);
        assert_eq!(p.fair_share, 25 * MIB);
        assert_eq!(p.free, vec![0, 5 * MIB, 0]);
        assert_eq!(p.refuse, vec![false, true, true]);
        // Entering needs the high watermark.
        assert!(!decide(&w(), false, 80 * MIB, &[load(2), load(48), load(30)]).overloaded);
    }

    #[test]
    fn sources_at_or_under_their_fair_share_are_never_shed() {
        // 78 MiB used, 60 of them nobody's: the three sources share the other 15 MiB of the low
        // watermark, 5 each. The 3 MiB over the low watermark come from the one over its share.
        let p = decide(&w(), true, 78 * MIB, &[load(5), load(9), load(4)]);
        assert!(p.overloaded);
        assert_eq!(p.fair_share, 5 * MIB);
        assert_eq!(p.free, vec![0, 3 * MIB, 0]);
        assert_eq!(p.refuse, vec![false, true, false]);
        // A source that was refusing and is down to its fair share stops refusing.
        let p = decide(&w(), true, 78 * MIB, &[SourceLoad { held: 5 * MIB, refusing: true }, load(9), load(4)]);
        assert_eq!(p.refuse, vec![false, true, false]);
        // Only when what nobody holds is over the low watermark by itself is every source over
        // its (zero) share: then all give back what they hold, heaviest first.
        let p = decide(&w(), false, 95 * MIB, &[load(5), load(9), load(4)]);
        assert_eq!(p.fair_share, 0);
        assert_eq!(p.free, vec![5 * MIB, 9 * MIB, 4 * MIB]);
    }

    #[test]
    fn the_excess_is_taken_heaviest_first_each_down_to_the_fair_share() {
        // 99 MiB, all held: fair share 75/3 = 25 MiB; 24 MiB needed: the 50 MiB source gives
        // them all (it has 25 above its share), the 40 MiB one nothing, the 9 MiB one nothing.
        let p = decide(&w(), false, 99 * MIB, &[load(40), load(9), load(50)]);
        assert_eq!(p.free, vec![0, 0, 24 * MIB]);
        assert_eq!(p.refuse, vec![false, false, true]);
        // Two heavy sources of 45 MiB: the first down to its share (20), the second the rest (4).
        let p = decide(&w(), false, 99 * MIB, &[load(45), load(45), load(9)]);
        assert_eq!(p.free, vec![20 * MIB, 4 * MIB, 0]);
        assert_eq!(p.refuse, vec![true, true, false]);
    }

    #[test]
    fn no_source_no_overflow() {
        let p = decide(&w(), false, u64::MAX, &[]);
        assert!(p.overloaded);
        assert!(p.free.is_empty());
        let p = decide(&w(), false, u64::MAX, &[SourceLoad { held: u64::MAX, refusing: false }, load(1)]);
        assert!(p.free[0] > 0);
        assert_eq!(Watermarks::new(u64::MAX).high, u64::MAX / 10 * 9);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_is_purged_after_a_shed_and_after_a_large_drop_at_most_once_a_second() {
        let mut m = MemoryReturn::default();
        let budget = 640 * MIB; // a 64th: 10 MiB
        assert!(!m.should_purge(Instant::now(), 50 * MIB, budget));
        assert!(!m.should_purge(Instant::now(), 41 * MIB, budget), "9 MiB is not a large drop");
        assert!(m.should_purge(Instant::now(), 40 * MIB, budget), "10 MiB below the peak");
        assert!(!m.should_purge(Instant::now(), 40 * MIB, budget));
        // Up and down again within the second: not yet; after it: yes.
        assert!(!m.should_purge(Instant::now(), 80 * MIB, budget));
        assert!(!m.should_purge(Instant::now(), 10 * MIB, budget), "rate-limited");
        tokio::time::advance(PURGE_EVERY).await;
        assert!(m.should_purge(Instant::now(), 10 * MIB, budget));
        // Then a few more, a second apart, then no more.
        assert!(!m.should_purge(Instant::now(), 10 * MIB, budget));
        for _ in 0..FOLLOW_UP_PURGES {
            tokio::time::advance(PURGE_EVERY).await;
            assert!(m.should_purge(Instant::now(), 10 * MIB, budget), "a follow-up purge");
        }
        tokio::time::advance(PURGE_EVERY).await;
        assert!(!m.should_purge(Instant::now(), 10 * MIB, budget));
        // A shed purges at the next look, whatever the rate limit.
        m.shed();
        assert!(m.should_purge(Instant::now(), 10 * MIB, budget));
        assert!(!m.should_purge(Instant::now(), 10 * MIB, budget));
    }

    #[test]
    fn the_budget_defaults_to_80_percent_of_the_smallest_cgroup_limit_on_the_path() {
        let d = tempfile::tempdir().expect("tempdir");
        let pod = d.path().join("kubepods/pod1");
        let ctr = pod.join("ctr");
        std::fs::create_dir_all(&ctr).expect("mkdir");
        std::fs::write(ctr.join("memory.max"), "max\n").expect("write");
        std::fs::write(pod.join("memory.max"), format!("{}\n", 512 * MIB)).expect("write");
        std::fs::write(d.path().join("memory.max"), format!("{}\n", 4096 * MIB)).expect("write");
        let (b, o) = default_budget("0::/kubepods/pod1/ctr\n", d.path());
        assert_eq!(o, BudgetOrigin::Cgroup { memory_max: 512 * MIB });
        assert_eq!(b, 512 * MIB / 100 * 80);
        std::fs::write(pod.join("memory.max"), "max\n").expect("write");
        std::fs::remove_file(d.path().join("memory.max")).expect("rm");
        assert_eq!(default_budget("0::/kubepods/pod1/ctr\n", d.path()), (DEFAULT_BUDGET, BudgetOrigin::Default));
        assert_eq!(default_budget("1:name=systemd:/x\n", d.path()).1, BudgetOrigin::Default);
    }

    #[test]
    fn socket_buffers_are_read_from_the_agents_cgroup_v2_or_v1() {
        let d = tempfile::tempdir().expect("tempdir");
        let v2 = d.path().join("kubepods/pod1/ctr");
        std::fs::create_dir_all(&v2).expect("mkdir");
        std::fs::write(v2.join("memory.stat"), "anon 1000\nfile 0\nsock 7340032\nshmem 0\n").expect("write");
        let found = SocketMemory::find("0::/kubepods/pod1/ctr\n", d.path());
        assert_eq!(found, SocketMemory::V2Stat(v2.join("memory.stat")));
        assert_eq!(found.read(), Some(7 * MIB));
        // What the manager samples: the socket bytes beside the RSS (summed into the usage).
        let (rss, socket) = sample(page_size(), &found).expect("sample");
        assert!(rss > 0);
        assert_eq!(socket, 7 * MIB);

        // Hybrid: cgroup v2 at unified/ without the memory controller, memory on v1.
        let h = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(h.path().join("unified/x")).expect("mkdir");
        let v1 = h.path().join("memory/x");
        std::fs::create_dir_all(&v1).expect("mkdir");
        std::fs::write(v1.join("memory.kmem.tcp.usage_in_bytes"), "4096\n").expect("write");
        let found = SocketMemory::find("6:memory:/x\n0::/x\n", h.path());
        assert_eq!(found, SocketMemory::V1KmemTcp(v1.join("memory.kmem.tcp.usage_in_bytes")));
        assert_eq!(found.read(), Some(4096));

        // The root cgroup has no memory.stat: nothing counted.
        assert_eq!(SocketMemory::find("0::/\n", d.path()), SocketMemory::None);
        assert_eq!(sample(page_size(), &SocketMemory::None).map(|s| s.1), Some(0));
        assert_eq!(parse_memory_stat_sock("socket 5\nsock x\n"), None);
    }

    #[test]
    fn sizes_statm_and_memory_max_parse() {
        assert_eq!(parse_bytes("400Mi"), Ok(400 * MIB));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("12Xi").is_err());
        assert!(parse_bytes("99999999999999Gi").is_err());
        assert!(parse_bytes("").is_err());
        assert_eq!(parse_statm("5000 1200 300 10 0 900 0\n", 4096), Some(1200 * 4096));
        assert_eq!(parse_statm("5000", 4096), None);
        assert_eq!(parse_memory_max("536870912\n"), Some(512 * MIB));
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(cgroup_path("0::/system.slice/mesh.service\n"), Some("/system.slice/mesh.service"));
    }
}

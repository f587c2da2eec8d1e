//! Process-tree bookkeeping from /proc, so shutdown can prove nothing it started survives.

use std::collections::{HashMap, HashSet};

/// A process identity that survives pid reuse: (pid, start time in clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

/// (ppid, start time, comm) of `pid`, from /proc/PID/stat.
fn stat(pid: i32) -> Option<(i32, u64, String)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm is in parentheses and may contain spaces; fields after the last ')' are positional.
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let rest: Vec<&str> = s[close + 2..].split(' ').collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let start = rest.get(19)?.parse().ok()?;
    Some((ppid, start, comm))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Every live descendant of `root` (not `root` itself), with its command name.
pub fn descendants(root: i32) -> Vec<(ProcId, String)> {
    let mut children: HashMap<i32, Vec<(i32, u64, String)>> = HashMap::new();
    for pid in all_pids() {
        if let Some((ppid, start, comm)) = stat(pid) {
            children.entry(ppid).or_default().push((pid, start, comm));
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    let mut seen = HashSet::new();
    while let Some(p) = stack.pop() {
        for (pid, start, comm) in children.get(&p).into_iter().flatten() {
            if seen.insert(*pid) {
                out.push((ProcId { pid: *pid, start: *start }, comm.clone()));
                stack.push(*pid);
            }
        }
    }
    out
}

/// Every live process whose command line contains `needle` (a profile path unique to one
/// browser): finds its renderers and helpers even after they were reparented to init.
pub fn with_cmdline_containing(needle: &str) -> Vec<ProcId> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| String::from_utf8_lossy(arg).contains(needle)))
        })
        .filter_map(|pid| stat(pid).map(|(_, start, _)| ProcId { pid, start }))
        .collect()
}

/// The identity of the running process `pid`, if there is one.
pub fn proc_id(pid: i32) -> Option<ProcId> {
    stat(pid).map(|(_, start, _)| ProcId { pid, start })
}

/// Whether this exact process (not a later one reusing the pid) still exists and is not a zombie.
pub fn alive(p: ProcId) -> bool {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)) else { return false };
    let Some(close) = s.rfind(')') else { return false };
    let state = s[close + 2..].split(' ').next().unwrap_or("");
    stat(p.pid).is_some_and(|(_, start, _)| start == p.start) && state != "Z"
}

/// A process's memory from /proc/PID/smaps_rollup, in bytes. PSS (proportional set size) splits
/// each page among the processes mapping it, so a sum over a process tree counts shared pages
/// once. `anon` is PSS without file-backed pages (binary, libraries): those are shared with any
/// other process of the same build on the machine, so their share moves as others come and go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub pss: u64,
    pub anon: u64,
}

/// `pid`'s memory; None once it is gone.
pub fn memory(pid: i32) -> Option<Memory> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let kb: u64 =
            s.lines().find_map(|l| l.strip_prefix(name))?.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some(Memory { pss: field("Pss:")?, anon: field("Pss_Anon:")? + field("Pss_Shmem:")? })
}

/// SIGKILL each process of `procs` that is still the same process.
pub fn kill_all(procs: &[ProcId]) {
    for p in procs {
        if alive(*p) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(p.pid, libc::SIGKILL);
            }
        }
    }
}

/// Wait until none of `procs` is alive, up to `timeout`; returns those still alive.
pub async fn wait_gone(procs: &[ProcId], timeout: std::time::Duration) -> Vec<ProcId> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let left: Vec<ProcId> = procs.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_and_kills_a_child() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let me = std::process::id() as i32;
        let found: Vec<ProcId> =
            descendants(me).into_iter().filter(|(p, _)| p.pid == child.id() as i32).map(|(p, _)| p).collect();
        assert_eq!(found.len(), 1, "sleep is our child");
        assert!(alive(found[0]));
        kill_all(&found);
        child.wait().unwrap();
        assert!(!alive(found[0]));
    }

    #[test]
    fn reads_its_own_memory() {
        let m = memory(std::process::id() as i32).expect("our own smaps_rollup");
        assert!(m.pss > 0 && m.anon > 0 && m.anon <= m.pss, "{m:?}");
        // 64 MiB written (not just reserved) shows up as anonymous memory.
        let block = vec![1u8; 64 << 20];
        let after = memory(std::process::id() as i32).unwrap();
        assert!(after.anon >= m.anon + (60 << 20), "{m:?} → {after:?}");
        drop(std::hint::black_box(block));
    }

    #[test]
    fn finds_processes_by_an_argument() {
        let marker = format!("tabpool-marker-{}", std::process::id());
        // `read` is a shell builtin: the shell never forks, so no short-lived copy of it (a forked
        // child that has not exec'd yet still shows the marker) can be found beside it.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "read _", &marker])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Until the child has exec'd, its command line is still ours.
        let mut found = with_cmdline_containing(&marker);
        for _ in 0..200 {
            if !found.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = with_cmdline_containing(&marker);
        }
        assert_eq!(found.iter().map(|p| p.pid).collect::<Vec<_>>(), [child.id() as i32]);
        kill_all(&found);
        child.wait().unwrap();
        assert!(with_cmdline_containing(&marker).is_empty());
    }
}
